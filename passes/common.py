"""What every jaxlite pass shares: the resources a pass over a model reads besides the IR
(its WeightStore, calibration), and small queries on values (is it a constant, what is its
array, who uses it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, OpResult, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from jaxlite.dialects import jlax
from jaxlite.dialects.types import tensor_type
from jaxlite.dialects.weights import WeightStore
from jaxlite.errors import ConversionError

# (module, values of its @main body) -> max |x| of each value over the calibration data
Calibrator = Callable[[ModuleOp, Sequence[SSAValue]], Mapping[SSAValue, float]]


@dataclass(frozen=True)
class PassResources:
    """What passes over a model read besides the IR: the arrays its ``jlax.weight`` ops name,
    and (for full-integer quantization) a way to measure activation ranges."""

    weights: WeightStore
    calibrate: Calibrator | None = None


@dataclass(frozen=True)
class ModelPass(ModulePass):
    """A pass that reads or writes the model's weights. Its options come from the pipeline
    string; the pipeline hands it the model's resources with ``bind`` before it runs."""

    resources: PassResources | None = field(default=None, init=False, repr=False, compare=False)

    def bind(self, resources: PassResources) -> Self:
        bound = dataclasses.replace(self)
        object.__setattr__(bound, "resources", resources)
        return bound

    @property
    def weights(self) -> WeightStore:
        if self.resources is None:
            raise ConversionError(f"pass {self.name!r} reads the model's weights: run it with "
                                  "jaxlite.passes.run (or convert / jaxlite opt), which provide them")
        return self.resources.weights


def producer(value: SSAValue) -> Operation | None:
    return value.owner if isinstance(value, OpResult) else None


def new_op(primitive: str, inputs: list[SSAValue], shape, dtype, params: dict) -> jlax.LaxOp:
    """A jlax op of ``primitive`` with one result of ``shape``/``dtype`` and Python-valued
    ``params`` (the op's verifier checks the shape against the primitive's)."""
    return jlax.PRIMITIVE_OPS[primitive].create_from_params(inputs, [tensor_type(shape, dtype)], params)


def is_constant(value: SSAValue) -> bool:
    return isinstance(producer(value), jlax.ConstantOp | jlax.WeightOp)


def constant_array(value: SSAValue, weights: WeightStore) -> np.ndarray | None:
    """The array of a value produced by jlax.constant or jlax.weight, else None."""
    op = producer(value)
    if isinstance(op, jlax.ConstantOp):
        return op.to_array()
    if isinstance(op, jlax.WeightOp):
        return np.asarray(weights[op.weight_name]) if op.weight_name in weights else None
    return None


def splat_value(value: SSAValue) -> float | int | None:
    """The single value of a small constant whose elements are all equal, else None."""
    op = producer(value)
    if not isinstance(op, jlax.ConstantOp):
        return None
    arr = op.to_array()
    if arr.size == 0 or not (arr == arr.reshape(-1)[0]).all():
        return None
    return arr.reshape(-1)[0].item()


def users(value: SSAValue) -> list[Operation]:
    return [use.operation for use in value.uses]


def sole_user(value: SSAValue) -> Operation | None:
    ops = users(value)
    return ops[0] if len(ops) == 1 else None


def other_operand(op: Operation, value: SSAValue) -> SSAValue | None:
    """The other operand of a binary op that reads ``value``, else None."""
    a, b = op.operands
    if a is value:
        return b
    if b is value:
        return a
    return None


def is_op(op: Operation | None, primitive: str) -> bool:
    return isinstance(op, jlax.LaxOp) and op.PRIMITIVE == primitive


def replace_pattern(root: Operation, matched: list[Operation], new_ops: list[Operation],
                    old_value: SSAValue, new_value: SSAValue) -> None:
    """Replace a matched subgraph: ``root`` (its first op, e.g. a dot/conv) and the ops
    after it (in program order; the last one produces ``old_value``). The new ops go where
    the last matched op was, so every operand they read is already defined."""
    Rewriter.insert_op(new_ops, InsertPoint.before(matched[-1] if matched else root))
    old_value.replace_all_uses_with(new_value)
    for dead in [*reversed(matched), root]:
        dead.detach()
        dead.erase()
