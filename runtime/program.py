"""Turn a block of jlax IR into a Python callable over jax values, once.

The program is a flat list of steps (kernel, input slots, output slots); a value's slot is
cleared after its last use, so evaluating eagerly (outside jit) holds no dead tensors.
Under ``jax.jit`` the same program is traced once and XLA compiles the whole graph.
Regions may read values of enclosing blocks (after CSE hoists an op, say): such captured
values become extra inputs of the op that holds the region.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from xdsl.dialects import func
from xdsl.ir import Block, Operation, SSAValue

from jaxlite.dialects import jlax

if TYPE_CHECKING:
    from jaxlite.runtime.registry import Kernel

_TERMINATORS = (func.ReturnOp, jlax.YieldOp)


def _defined_inside(value: SSAValue, block: Block) -> bool:
    owner = value.owner
    b = owner if isinstance(owner, Block) else owner.parent_block()
    while b is not None:
        if b is block:
            return True
        parent_op = b.parent_op()
        b = parent_op.parent_block() if parent_op is not None else None
    return False


def captures_of(op: Operation) -> list[SSAValue]:
    """Values the regions of ``op`` read from outside ``op``."""
    seen: dict[SSAValue, None] = {}
    for region in op.regions:
        for inner in region.walk():
            for v in inner.operands:
                owner = v.owner
                block = owner if isinstance(owner, Block) else owner.parent_block()
                inside = False
                while block is not None:
                    if block.parent_op() is op:
                        inside = True
                        break
                    parent = block.parent_op()
                    block = parent.parent_block() if parent is not None else None
                if not inside:
                    seen.setdefault(v, None)
    return list(seen)


def _unread_ops(body: list[Operation], kernels: dict[Operation, Kernel], taps: Sequence[SSAValue]) -> set:
    """Ops whose results only feed operands their users' kernels never read (e.g. a weight
    upcast at load for a matmul that packs the weight itself): not run, their derived arrays
    not placed."""
    dead: set[Operation] = set()
    tapped = set(taps)
    for op in reversed(body):
        uses = [use for r in op.results for use in r.uses]
        if uses and not tapped & set(op.results) and all(
                use.operation in dead or (use.operation in kernels and use.index in kernels[use.operation].unread)
                for use in uses):
            dead.add(op)
    return dead


class BlockProgram:
    """A compiled block: ``program(weights, args, captured)`` returns the terminator's values."""

    def __init__(self, block: Block, kernel_for: Callable[[Operation], Kernel],
                 taps: Sequence[SSAValue] = ()):
        """``taps``: extra values of the block to return after the terminator's values."""
        self.captures = [v for op in block.ops for v in op.operands if not _defined_inside(v, block)]
        self.captures += [v for op in block.ops for v in captures_of(op) if not _defined_inside(v, block)]
        self.captures = list(dict.fromkeys(self.captures))
        slot: dict[SSAValue, int] = {}
        for v in list(block.args) + self.captures:
            slot[v] = len(slot)
        self.num_args = len(block.args)
        body = []
        for op in block.ops:
            if isinstance(op, _TERMINATORS):
                break
            body.append(op)
        kernels = {op: kernel_for(op) for op in body}
        self.dead = _unread_ops(body, kernels, taps)
        steps = []
        results: list[int] = []
        for op in block.ops:
            if isinstance(op, _TERMINATORS):
                results = [slot[v] for v in op.operands] + [slot[v] for v in taps]
                break
            inputs = list(op.operands) + captures_of(op)
            for r in op.results:
                slot[r] = len(slot)
            if op not in self.dead:
                steps.append((kernels[op].run, [slot[v] for v in inputs], [slot[r] for r in op.results]))
        self.num_slots = len(slot)
        self.results = results
        # liveness: free each slot after the step that reads it last
        last_use: dict[int, int] = {}
        for i, (_, ins, _) in enumerate(steps):
            for s in ins:
                last_use[s] = i
        keep = set(results)
        frees: list[list[int]] = [[] for _ in steps]
        for s, i in last_use.items():
            if s not in keep:
                frees[i].append(s)
        self.steps = [(k, ins, outs, frees[i]) for i, (k, ins, outs) in enumerate(steps)]

    def __call__(self, weights: Mapping[str, Any], args: Sequence[Any], captured: Sequence[Any] = ()) -> list:
        env: list[Any] = [None] * self.num_slots
        env[: len(args)] = args
        env[len(args): len(args) + len(captured)] = captured
        for kernel, ins, outs, frees in self.steps:
            values = kernel(weights, *[env[i] for i in ins])
            for s, v in zip(outs, values, strict=True):
                env[s] = v
            for s in frees:
                env[s] = None
        return [env[i] for i in self.results]
