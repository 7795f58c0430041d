"""fuse: dot_general / conv_general_dilated + bias add + activation -> one jfuse op;
LayerNorm and softmax -> ``jfuse.layer_norm`` / ``jfuse.softmax`` (passes/fuse_rows.py).

The bias must vary only along the output feature axis (a Dense or Conv bias, or what
fold-affine produced), so residual adds are never mistaken for biases. Activations are
recognised in the shapes jax.nn traces them into:

relu ``max(y, 0)``; relu6 ``min(max(y, 0), 6)`` or ``clamp(0, y, 6)``; sigmoid
``logistic(y)``; tanh; silu ``y * logistic(y)``; gelu (tanh form)
``y * (0.5 * (1 + tanh(sqrt(2/pi) * (y + 0.044715 * y**3))))``; gelu (exact)
``(0.5 * y) * erfc(-y * 1/sqrt(2))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.transforms.dead_code_elimination import dce

from jaxlite.dialects import fused, jlax
from jaxlite.dialects.params import decode
from jaxlite.dialects.types import shape_dtype
from jaxlite.passes.common import (
    is_op,
    other_operand,
    producer,
    replace_pattern,
    sole_user,
    splat_value,
    users,
)
from jaxlite.passes.fuse_rows import fuse_rows


def _close(x, target, rel=1e-4) -> bool:
    return x is not None and abs(x - target) <= rel * abs(target)


def _binary_with_const(op, prim: str, value: SSAValue, target: float) -> bool:
    """op is ``prim(value, c)`` or ``prim(c, value)`` with c a constant close to target."""
    if not is_op(op, prim) or len(op.operands) != 2 or value not in op.operands:
        return False
    return _close(splat_value(other_operand(op, value)), target)


def match_activation(y: SSAValue) -> tuple[str, SSAValue, list[Operation]] | None:
    """(activation, output value, ops it consists of) for the activation applied to y."""
    uses = users(y)
    if len(uses) == 1:
        u = uses[0]
        if _binary_with_const(u, "max", y, 0.0):
            out = u.results[0]
            m = sole_user(out)
            if is_op(m, "min") and other_operand(m, out) is not None and splat_value(other_operand(m, out)) == 6:
                return "relu6", m.results[0], [u, m]
            return "relu", out, [u]
        if is_op(u, "clamp") and u.operands[1] is y and splat_value(u.operands[0]) == 0 \
                and splat_value(u.operands[2]) == 6:
            return "relu6", u.results[0], [u]
        if is_op(u, "logistic"):
            return "sigmoid", u.results[0], [u]
        if is_op(u, "tanh"):
            return "tanh", u.results[0], [u]
    if len(uses) == 2:
        logistic = next((u for u in uses if is_op(u, "logistic")), None)
        mul = next((u for u in uses if is_op(u, "mul")), None)
        if logistic is not None and mul is not None and sole_user(logistic.results[0]) is mul \
                and set(mul.operands) == {y, logistic.results[0]}:
            return "silu", mul.results[0], [logistic, mul]
        return _match_gelu_erf(y, uses)
    if len(uses) == 3:
        return _match_gelu_tanh(y, uses)
    return None


def _match_gelu_erf(y, uses):
    half = next((u for u in uses if _binary_with_const(u, "mul", y, 0.5)), None)
    neg = next((u for u in uses if is_op(u, "neg")), None)
    if half is None or neg is None:
        return None
    scaled = sole_user(neg.results[0])
    if not _binary_with_const(scaled, "mul", neg.results[0], 1 / math.sqrt(2)):
        return None
    erfc = sole_user(scaled.results[0])
    if not is_op(erfc, "erfc"):
        return None
    out = sole_user(erfc.results[0])
    if not is_op(out, "mul") or set(out.operands) != {half.results[0], erfc.results[0]} \
            or sole_user(half.results[0]) is not out:
        return None
    return "gelu_erf", out.results[0], [half, neg, scaled, erfc, out]


def _match_gelu_tanh(y, uses):
    cube = next((u for u in uses if is_op(u, "integer_pow") and decode(u.attributes["y"]) == 3), None)
    if cube is None:
        return None
    c1 = sole_user(cube.results[0])
    if not _binary_with_const(c1, "mul", cube.results[0], 0.044715):
        return None
    inner = sole_user(c1.results[0])
    if not (is_op(inner, "add") and set(inner.operands) == {y, c1.results[0]}):
        return None
    c2 = sole_user(inner.results[0])
    if not _binary_with_const(c2, "mul", inner.results[0], math.sqrt(2 / math.pi)):
        return None
    t = sole_user(c2.results[0])
    if not is_op(t, "tanh"):
        return None
    one = sole_user(t.results[0])
    if not _binary_with_const(one, "add", t.results[0], 1.0):
        return None
    half = sole_user(one.results[0])
    if not _binary_with_const(half, "mul", one.results[0], 0.5):
        return None
    out = sole_user(half.results[0])
    if not (is_op(out, "mul") and set(out.operands) == {y, half.results[0]}):
        return None
    ops = [cube, c1, inner, c2, t, one, half, out]
    if set(uses) != {cube, inner, out}:
        return None
    return "gelu_tanh", out.results[0], ops


def _bias_operand(add: Operation, y: SSAValue, out_axes: tuple[int, ...]) -> SSAValue | None:
    """The other operand of ``add`` if it is a per-output-channel bias for y (varying only
    along the output feature axes)."""
    if not is_op(add, "add") or add.results[0].type != y.type:
        return None
    b = other_operand(add, y)
    if b is None or b is y:
        return None
    out_shape, dtype = shape_dtype(y.type)
    b_shape, b_dtype = shape_dtype(b.type)
    if b_dtype != dtype:
        return None
    if b_shape == ():
        return b
    if len(b_shape) != len(out_shape) or any(s != 1 for i, s in enumerate(b_shape) if i not in out_axes):
        return None
    defining = producer(b)
    if defining is not None and defining.parent_block() is add.parent_block():
        # the bias must be available where the dot/conv is
        return b if _defined_before(defining, add) else None
    return b


def _defined_before(a: Operation, b: Operation) -> bool:
    return a.parent_block().get_operation_index(a) < b.parent_block().get_operation_index(b)


def _fuse_one(op: jlax.LaxOp) -> bool:
    axes = op.feature_axes()
    y = op.results[0]
    if shape_dtype(y.type)[1].kind != "f":
        return False
    bias = None
    pre = y
    consumed: list[Operation] = []
    add = sole_user(y)
    if axes is not None and add is not None and (b := _bias_operand(add, y, axes[0])) is not None:
        bias, pre = b, add.results[0]
        consumed.append(add)
    act = match_activation(pre)
    activation, out = "none", pre
    if act is not None:
        activation, out, ops = act
        consumed += ops
    if not consumed:
        return False
    fused_cls = fused.FUSED_FOR[op.PRIMITIVE]
    new = fused_cls(op.operands[0], op.operands[1], bias, y.type, dict(op.attributes), activation)
    replace_pattern(op, consumed, [new], out, new.result)
    return True


@dataclass(frozen=True)
class FusePass(ModulePass):
    name = "fuse"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        fuse_rows(list(op.walk()))
        for candidate in [o for o in op.walk() if isinstance(o, jlax.LaxOp)
                          and o.PRIMITIVE in fused.FUSED_FOR]:
            _fuse_one(candidate)
        dce(op)  # the constants the rewritten ops consumed
