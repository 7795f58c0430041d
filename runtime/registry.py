"""The kernel registry: each op's implementations, registered per target.

A *target* is one way to run ops -- XLA's generic code (``xla``), jaxlite's native CPU
kernels for an ISA (``cpu-avx512vnni``), float16 arithmetic (``xla-float16``) -- with a check
of whether this machine can use it. A *rule* turns one IR op into a ``Kernel`` for its
target, or declines (returns None) when it cannot run that op (a shape the native kernel
does not take). An Executable has an ordered list of targets; each op gets the kernel of
the first target whose rule accepts it (``lowering.Lowering``), in the spirit of jax's
``register_lowering(prim, rule, platform=...)``. Adding a kernel is registering a rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from xdsl.ir import Block, Operation


@dataclass(frozen=True)
class Kernel:
    """``run(weights, *operand values) -> result values`` (traced once under jax.jit)."""

    run: Callable[..., Sequence[Any]]
    # operands the kernel never reads (their values reach it another way, e.g. a weight
    # packed at load): a weight read only through such operands is not placed on the device
    unread: frozenset[int] = frozenset()
    # one native call (a custom call): XLA cannot fuse it with its neighbours
    native: bool = False


class LoweringContext(Protocol):
    """What a rule may ask of the program being built (implemented by ``Lowering``)."""

    def kernel(self, op: Operation) -> Kernel: ...
    def weight(self, name: str): ...
    def derive(self, name: str, nbytes: int, make: Callable[[], Any], *, embeddable: bool = True,
               replicated: bool = False) -> str: ...
    def program(self, block: Block): ...


Rule = Callable[[Operation, LoweringContext], "Kernel | Callable | None"]


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    # None where this machine can use the target, else why not (one line)
    unavailable: Callable[[], str | None] = field(default=lambda: None, compare=False)
    # targets of higher preference come first in the default order (else: registration order)
    preference: int = 0


TARGETS: dict[str, Target] = {}
_RULES: dict[tuple[type[Operation], str], Rule] = {}


def register_target(name: str, description: str, unavailable: Callable[[], str | None] = lambda: None,
                    preference: int = 0) -> Target:
    target = TARGETS[name] = Target(name, description, unavailable, preference)
    return target


def register(*op_types: type[Operation], target: str | tuple[str, ...] = "xla"):
    """Decorator: ``rule(op, ctx)`` implements ops of ``op_types`` (and their subclasses)
    on ``target`` (or on each of several: one kernel source built per ISA)."""
    targets = (target,) if isinstance(target, str) else target
    for name in targets:
        if name not in TARGETS:
            raise ValueError(f"unknown target {name!r}; register it first")

    def deco(rule: Rule) -> Rule:
        for t in op_types:
            for name in targets:
                _RULES[(t, name)] = rule
        return rule
    return deco


def rules_for(op: Operation, target: str) -> list[Rule]:
    """The rules of ``target`` that may implement ``op``, most specific op class first."""
    return [rule for cls in type(op).__mro__ if (rule := _RULES.get((cls, target))) is not None]


def _specific_first(target: Target) -> tuple[bool, bool, int]:
    return target.name == "xla", target.name.startswith("xla"), -target.preference


def target_status() -> list[tuple[Target, str | None]]:
    """(target, None or why it is unavailable) for every registered target, most specific
    first (``xla`` last)."""
    return [(t, t.unavailable()) for t in sorted(TARGETS.values(), key=_specific_first)]


def available_targets() -> list[str]:
    """Names of the targets this machine can use, most specific first (``xla`` last)."""
    return [t.name for t, why in target_status() if why is None]


XLA = register_target("xla", "XLA's generic code for every op (CPU and GPU): the portable path")
