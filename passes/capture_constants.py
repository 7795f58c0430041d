"""capture-constants: weights and constants that a loop or branch receives as operands are
read where they are used, inside its region (a capture of the outer value).

jax passes what a ``lax.scan`` / ``lax.while_loop`` / ``lax.cond`` body closes over as
operands: flax's ``nn.RNN`` hands every kernel and bias of its cell to the scan as a
"const", so inside the body a ``dot`` reads a block argument, not a weight. Every pass
that looks for a weight operand then misses it: fold-affine and fuse, and quantize, which
kept an LSTM's kernels in float32 (the file no smaller) and quantized them again on every
step as activations. Regions may read values defined above them (the runtime passes such
captures in), so the operand and its block argument are dropped and the uses read the
outer weight directly.

Then loop-invariant ops move out of loop bodies (as MLIR's loop-invariant-code-motion
does): an op of a scan/while body whose operands all come from outside the loop runs once,
before it. flax's OptimizedLSTMCell concatenates its four gate kernels inside the step;
hoisted, that is a concatenate of weights, which canonicalize folds into one weight.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter
from xdsl.traits import Pure

from jaxlite.dialects import jlax
from jaxlite.dialects.params import encode
from jaxlite.passes.common import is_constant


def _capture(block: Block, arg_index: int, value: SSAValue) -> None:
    arg = block.args[arg_index]
    arg.replace_all_uses_with(value)
    block.erase_arg(arg)


def _rebuild(op: Operation, operands: list[SSAValue], attributes: dict) -> Operation:
    """``op`` with new operands and attributes, its regions moved over."""
    regions = [op.detach_region(r) for r in list(op.regions)]
    new = type(op).create(operands=operands, result_types=[r.type for r in op.results],
                          attributes=attributes, properties=dict(op.properties), regions=regions)
    Rewriter.replace_op(op, new)
    return new


def capture_scan(op: jlax.ScanOp) -> bool:
    nconst = op.num_consts
    taken = [i for i in range(nconst) if is_constant(op.operands[i])]
    for i in reversed(taken):
        _capture(op.body.block, i, op.operands[i])
    if not taken:
        return False
    attributes = dict(op.attributes)
    attributes["num_consts"] = encode(nconst - len(taken))
    _rebuild(op, [v for i, v in enumerate(op.operands) if i not in taken], attributes)
    return True


def capture_while(op: jlax.WhileOp) -> bool:
    nc, nb = op.cond_nconsts, op.body_nconsts
    cond_taken = [i for i in range(nc) if is_constant(op.operands[i])]
    body_taken = [i for i in range(nc, nc + nb) if is_constant(op.operands[i])]
    for i in reversed(cond_taken):
        _capture(op.cond.block, i, op.operands[i])
    for i in reversed(body_taken):
        _capture(op.body.block, i - nc, op.operands[i])
    if not cond_taken and not body_taken:
        return False
    attributes = dict(op.attributes)
    attributes["cond_nconsts"] = encode(nc - len(cond_taken))
    attributes["body_nconsts"] = encode(nb - len(body_taken))
    taken = set(cond_taken) | set(body_taken)
    _rebuild(op, [v for i, v in enumerate(op.operands) if i not in taken], attributes)
    return True


def capture_cond(op: jlax.CondOp) -> bool:
    """Branch operands (after the index) that are constants: every branch reads them."""
    taken = [i for i in range(1, len(op.operands)) if is_constant(op.operands[i])]
    for i in reversed(taken):
        for region in op.branches:
            _capture(region.block, i - 1, op.operands[i])
    if not taken:
        return False
    _rebuild(op, [v for i, v in enumerate(op.operands) if i not in taken], dict(op.attributes))
    return True


def _inside(value: SSAValue, op: Operation) -> bool:
    """Whether ``value`` is defined in one of ``op``'s regions (at any depth)."""
    owner = value.owner
    block = owner if isinstance(owner, Block) else owner.parent_block()
    while block is not None:
        parent = block.parent_op()
        if parent is op:
            return True
        block = parent.parent_block() if parent is not None else None
    return False


def hoist_invariants(loop: jlax.ScanOp | jlax.WhileOp) -> bool:
    """Move the ops of the loop's regions that read nothing defined inside the loop to just
    before it (pure ops without regions of their own; the loop's terminators stay)."""
    moved = False
    for region in loop.regions:
        for inner in list(region.block.ops):
            if inner.regions or isinstance(inner, jlax.YieldOp) or not inner.has_trait(Pure):
                continue
            if not any(_inside(v, loop) for v in inner.operands):
                inner.detach()
                Rewriter.insert_op(inner, InsertPoint.before(loop))
                moved = True
    return moved


def _capture_one(region_op: Operation) -> bool:
    if isinstance(region_op, jlax.ScanOp):
        return capture_scan(region_op)
    if isinstance(region_op, jlax.WhileOp):
        return capture_while(region_op)
    return capture_cond(region_op)


@dataclass(frozen=True)
class CaptureConstantsPass(ModulePass):
    name = "capture-constants"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        changed = True
        while changed:  # nested loops: what one step frees, the next may take
            changed = False
            for region_op in [o for o in op.walk() if isinstance(o, jlax.ScanOp | jlax.WhileOp | jlax.CondOp)]:
                if region_op.parent is None:
                    continue  # replaced by a rebuilt op in this sweep
                changed |= _capture_one(region_op)
            for loop in [o for o in op.walk() if isinstance(o, jlax.ScanOp | jlax.WhileOp)]:
                changed |= hoist_invariants(loop)
