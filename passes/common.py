"""What every jaxlite pass shares: the WeightStore of the model being optimized, and small
queries on values (is it a constant, what is its array, who uses it)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, Operation, OpResult, SSAValue

from jaxlite.compiler.weights import WeightStore
from jaxlite.dialects import jlax
from jaxlite.dialects.types import tensor_type

# Passes are xDSL ModulePasses (constructed from pipeline strings, so they hold no
# state); the driver binds what they read here while they run: the model's WeightStore,
# and for int8 mode the activation ranges (max |x| per SSA value) from calibration.
_STORE: contextvars.ContextVar[WeightStore | None] = contextvars.ContextVar("jaxlite_store", default=None)
_RANGES: contextvars.ContextVar[dict | None] = contextvars.ContextVar("jaxlite_ranges", default=None)


@contextlib.contextmanager
def _bound(var: contextvars.ContextVar, value) -> Iterator:
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)


def using_store(store: WeightStore):
    return _bound(_STORE, store)


def using_ranges(ranges: dict):
    return _bound(_RANGES, ranges)


def current_ranges() -> dict | None:
    return _RANGES.get()


def current_store() -> WeightStore:
    store = _STORE.get()
    if store is None:  # a pass run without weights (IR text): an empty store
        store = WeightStore()
        _STORE.set(store)
    return store


def producer(value: SSAValue) -> Operation | None:
    return value.owner if isinstance(value, OpResult) else None


def new_op(primitive: str, inputs: list[SSAValue], shape, dtype, params: dict) -> jlax.LaxOp:
    """A jlax op of ``primitive`` with one result of ``shape``/``dtype`` and Python-valued
    ``params`` (the op's verifier checks the shape against the primitive's)."""
    return jlax.PRIMITIVE_OPS[primitive].create_from_params(inputs, [tensor_type(shape, dtype)], params)


def is_constant(value: SSAValue) -> bool:
    return isinstance(producer(value), jlax.ConstantOp | jlax.WeightOp)


def constant_array(value: SSAValue) -> np.ndarray | None:
    """The array of a value produced by jlax.constant or jlax.weight, else None."""
    op = producer(value)
    if isinstance(op, jlax.ConstantOp):
        return op.to_array()
    if isinstance(op, jlax.WeightOp):
        store = current_store()
        return np.asarray(store[op.weight_name]) if op.weight_name in store else None
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
    from xdsl.rewriter import InsertPoint, Rewriter

    Rewriter.insert_op(new_ops, InsertPoint.before(matched[-1] if matched else root))
    old_value.replace_all_uses_with(new_value)
    for dead in [*reversed(matched), root]:
        dead.detach()
        dead.erase()


def blocks_of(module: ModuleOp) -> list[Block]:
    """Every block of the module (function bodies and control-flow regions)."""
    out = []
    for op in module.walk():
        for region in op.regions:
            out.extend(region.blocks)
    return out
