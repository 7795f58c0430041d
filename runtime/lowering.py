"""Lowering: the kernel of every op of a program, chosen from the registry by target order.

For each op, the targets are tried in the Executable's order and, within a target, the rules
of the op's class and then of its base classes; the first rule that returns a kernel wins
(``xla`` always has one). Rules may derive arrays from the model's weights at load time
(``derive``: a packed copy for a native GEMM, a float copy of a weight stored in low
precision), and lower the blocks of control-flow regions with the same targets
(``program``). Afterwards ``read_weights`` says which weights some kernel reads: the others
are never placed on the device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from xdsl.ir import Block, Operation

from jaxlite.dialects.jlax import WeightOp
from jaxlite.dialects.module import NOT_COUNTED
from jaxlite.dialects.weights import WeightStore
from jaxlite.runtime import (  # noqa: F401  (register their rules)
    cpu_kernels,
    onednn_int8_kernels,
    onednn_kernels,
    quant_kernels,
    xla_kernels,
)
from jaxlite.runtime.program import BlockProgram
from jaxlite.runtime.registry import Kernel, rules_for


class NoKernelError(LookupError):
    pass


class Lowering:
    """Kernels for the ops of one model, by the given target order."""

    def __init__(self, targets: Sequence[str], weights: WeightStore | None = None):
        self.targets = tuple(targets)
        self.weights = weights if weights is not None else WeightStore()
        self.kernels: dict[Operation, Kernel] = {}
        # name -> (bytes, make, embeddable) of the arrays rules derived from weights
        self._derived: dict[str, tuple[int, Callable[[], Any], bool]] = {}
        self._derived_by: dict[str, set[Operation]] = {}  # the ops whose kernels read each
        self.replicated: set[str] = set()  # derived arrays not laid out as their weight
        self._lowering: Operation | None = None
        self.dead: set[Operation] = set()  # ops the programs skip (see program.py)
        self.served: dict[Operation, str] = {}  # the target whose rule made each op's kernel
        self._read: set[str] = set()

    # --- what rules may ask (registry.LoweringContext) ---

    def weight(self, name: str):
        """A weight's host array (for deriving arrays from it)."""
        self._read.add(name)
        return self.weights[name]

    def take_weights_read(self) -> set[str]:
        """The weights ``weight`` handed out since the last call (their host copies may go)."""
        read, self._read = self._read, set()
        return read

    def derive(self, name: str, nbytes: int, make: Callable[[], Any], *, embeddable: bool = True,
               replicated: bool = False) -> str:
        """Name an array made from the weights when the model is placed (once per name).
        ``replicated``: its axes are not its weight's, so on a mesh it is copied whole to
        every device rather than split as the weight is."""
        self._derived.setdefault(name, (nbytes, make, embeddable))
        if replicated:
            self.replicated.add(name)
        self._derived_by.setdefault(name, set()).add(self._lowering)
        return name

    def program(self, block: Block) -> BlockProgram:
        program = BlockProgram(block, self.kernel)
        self.dead |= program.dead
        return program

    @property
    def derived(self) -> dict[str, tuple[int, Callable[[], Any], bool]]:
        """The derived arrays some kernel that runs reads."""
        return {name: entry for name, entry in self._derived.items() if self._derived_by[name] - self.dead}

    # --- results ---

    def kernel(self, op: Operation) -> Kernel:
        if op not in self.kernels:
            self.kernels[op] = self._choose(op)
        return self.kernels[op]

    def _choose(self, op: Operation) -> Kernel:
        for target in self.targets:
            for rule in rules_for(op, target):
                outer, self._lowering = self._lowering, op
                try:
                    made = rule(op, self)
                finally:
                    self._lowering = outer
                if made is not None:
                    self.served[op] = target
                    return made if isinstance(made, Kernel) else Kernel(made)
        raise NoKernelError(f"no kernel for {op.name} among targets {', '.join(self.targets)}")

    def targets_used(self) -> Counter:
        """How many of the ops that run (computing ops, as ``op_counts`` counts them) each
        target serves: which kernels a model actually got on this machine."""
        return Counter(target for op, target in self.served.items()
                       if op not in self.dead and op.name not in NOT_COUNTED)

    def read_weights(self) -> set[str]:
        """Names of the weights whose value is read: by a kernel, a terminator (a weight
        returned as it is) or anything else -- all but those every use of which is an
        operand its kernel never reads (replaced by a derived array)."""
        names = set()
        for op in self.kernels:
            if isinstance(op, WeightOp) and op not in self.dead and not all(
                    use.operation in self.dead or (use.operation in self.kernels
                                                   and use.index in self.kernels[use.operation].unread)
                    for use in op.result.uses):
                names.add(op.weight_name)
        return names


def reference_kernel(op: Operation) -> Kernel:
    """The portable (XLA) kernel of one op, outside any program (the quantization report
    runs single layers with it)."""
    return Lowering(("xla",)).kernel(op)


__all__ = ["Lowering", "NoKernelError", "reference_kernel"]
