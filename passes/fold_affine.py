"""fold-affine (alias fold-batchnorm): fold per-channel affine chains into dot/conv weights.

After a ``dot_general`` or ``conv_general_dilated`` whose kernel is a weight, a chain of
single-use ``add``/``sub``/``mul``/``div`` by constants that vary only along the output
feature axis (what BatchNorm in inference mode leaves after tracing: sub mean, mul
scale*rsqrt(var+eps), add beta; and the layer's own bias) is an affine map
``y -> a*y + b`` per channel. It is rewritten as one op with kernel ``W*a`` (scaled along
its output-feature axis) followed by one ``add`` of the bias ``b``.
Run canonicalize first, so BatchNorm's statistics are folded into constants.

A scalar multiply or divide after a dot between two activations (attention's scores / sqrt(d))
first moves onto one of the dot's inputs, through reshapes and transposes, where that input
comes from such a layer: the scale folds into that layer's weight and bias, and no op is
left to scale the scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue
from xdsl.rewriter import InsertPoint, Rewriter
from xdsl.transforms.dead_code_elimination import dce

from jaxlite.dialects import jlax
from jaxlite.dialects.types import shape_dtype, tensor_type
from jaxlite.dialects.weights import WeightStore
from jaxlite.passes.common import (
    ModelPass,
    constant_array,
    is_constant,
    producer,
    replace_pattern,
    sole_user,
)


def per_channel(value: SSAValue, out_shape: tuple[int, ...], axes: tuple[int, ...],
                weights: WeightStore) -> np.ndarray | None:
    """The constant as an array of the feature shape (``out_shape`` at ``axes``) if it
    broadcasts against the output and varies only along ``axes``, else None."""
    arr = constant_array(value, weights)
    if arr is None or arr.dtype.kind != "f" or (arr.ndim and arr.ndim != len(out_shape)):
        return None
    if arr.ndim == 0:
        arr = arr.reshape((1,) * len(out_shape))
    if any(s != 1 for i, s in enumerate(arr.shape) if i not in axes) \
            or any(arr.shape[a] not in (1, out_shape[a]) for a in axes):
        return None
    vec = arr[tuple(slice(None) if i in axes else 0 for i in range(arr.ndim))]
    return np.broadcast_to(vec, [out_shape[a] for a in axes])


def _fold_one(op: jlax.LaxOp, store: WeightStore) -> bool:
    axes = op.feature_axes()
    kernel_value = op.operands[1]
    if axes is None or not is_constant(kernel_value):
        return False
    out_axes, k_axes = axes
    y = op.results[0]
    out_shape, dtype = shape_dtype(y.type)
    if dtype.kind != "f":
        return False
    channels = [out_shape[d] for d in out_axes]
    a = np.ones(channels, np.float64)
    b = np.zeros(channels, np.float64)
    chain: list[Operation] = []
    value = y
    while (user := sole_user(value)) is not None and isinstance(user, jlax.LaxOp) \
            and user.PRIMITIVE in ("add", "sub", "mul", "div") and user.results[0].type == value.type:
        x, c_value = user.operands
        swapped = x is not value
        if swapped:
            x, c_value = c_value, x
        c = per_channel(c_value, out_shape, out_axes, store)
        if c is None:
            break
        c = c.astype(np.float64)
        p = user.PRIMITIVE
        if p == "add":
            b = b + c
        elif p == "sub" and not swapped:
            b = b - c
        elif p == "sub":
            a, b = -a, c - b
        elif p == "mul":
            a, b = a * c, b * c
        elif not swapped:  # y / c
            a, b = a / c, b / c
        else:
            break
        chain.append(user)
        value = user.results[0]
    if not chain or (len(chain) == 1 and chain[0].PRIMITIVE == "add" and np.all(a == 1)):
        return False  # nothing to fold (a plain bias add stays for the fuse pass)
    kernel = constant_array(kernel_value, store)
    scale_shape = [1] * kernel.ndim
    for k_axis, size in zip(k_axes, channels, strict=True):
        scale_shape[k_axis] = size
    new_kernel = (kernel.astype(np.float64) * a.reshape(scale_shape)).astype(kernel.dtype)
    hint = kernel_value.owner.weight_name if isinstance(kernel_value.owner, jlax.WeightOp) else "kernel"
    w = jlax.WeightOp(store.add(new_kernel, hint + ".folded"), kernel_value.type)
    new_op = type(op)([op.operands[0], w.results[0]], [y.type], dict(op.attributes))
    bias_shape = [1] * len(out_shape)
    for out_axis, size in zip(out_axes, channels, strict=True):
        bias_shape[out_axis] = size
    bias = b.astype(dtype).reshape(bias_shape)
    bias_op = jlax.WeightOp(store.add(bias, hint.rsplit(".", 1)[0] + ".bias_folded"),
                            tensor_type(bias_shape, dtype))
    add = jlax.PRIMITIVE_OPS["add"]([new_op.results[0], bias_op.results[0]], [value.type], {})
    replace_pattern(op, chain, [w, bias_op, new_op, add], value, add.results[0])
    return True


def _ends_foldable_layer(value: SSAValue) -> bool:
    """Whether value is a dot/conv with a constant kernel, or the end of a single-use chain
    of add/sub/mul/div by constants after one: where _fold_one can take a scale."""
    while isinstance(op := producer(value), jlax.LaxOp):
        if op.PRIMITIVE in ("dot_general", "conv_general_dilated"):
            return op.feature_axes() is not None and is_constant(op.operands[1])
        if op.PRIMITIVE not in ("add", "sub", "mul", "div"):
            return False
        x, c = op.operands
        if is_constant(x):
            x, c = c, x
        if not is_constant(c) or is_constant(x) or sole_user(x) is not op:
            return False
        value = x
    return False


def _hoist_scalar_scale(scale_op: jlax.LaxOp, store: WeightStore) -> bool:
    """dot(a, b) * c (or / c), c a scalar constant, a and b activations -> dot(a', b) where
    a' = R(a0 * c), R the single-use reshapes/transposes from a layer's output a0 to a."""
    y, c_value = scale_op.operands
    if scale_op.PRIMITIVE == "mul" and is_constant(y):
        y, c_value = c_value, y
    c = constant_array(c_value, store)
    dot = producer(y)
    if c is None or c.size != 1 or c.dtype.kind != "f" or is_constant(y) \
            or not (isinstance(dot, jlax.LaxOp) and dot.PRIMITIVE == "dot_general") or sole_user(y) is not scale_op \
            or any(is_constant(v) for v in dot.operands):
        return False
    factor = c.reshape(()).astype(np.float64)
    with np.errstate(divide="ignore"):
        factor = factor if scale_op.PRIMITIVE == "mul" else 1.0 / factor
    if factor == 0 or not np.isfinite(factor):  # x / 0 or x * 0 stays as written (inf, NaN)
        return False
    for operand in dot.operands:
        reader, value = dot, operand
        while isinstance(move := producer(value), jlax.LaxOp) and move.PRIMITIVE in ("reshape", "transpose") \
                and sole_user(value) is reader:
            reader, value = move, move.operands[0]
        if sole_user(value) is not reader or not _ends_foldable_layer(value):
            continue
        shape, dtype = shape_dtype(value.type)
        scalar = jlax.ConstantOp.from_array(np.asarray(factor, dtype))
        scaled = jlax.PRIMITIVE_OPS["mul"]([value, scalar.results[0]], [value.type], {})
        Rewriter.insert_op([scalar, scaled], InsertPoint.after(value.owner))
        reader.operands[list(reader.operands).index(value)] = scaled.results[0]
        scale_op.results[0].replace_all_uses_with(y)
        scale_op.detach()
        scale_op.erase()
        return True
    return False


@dataclass(frozen=True)
class FoldAffinePass(ModelPass):
    name = "fold-affine"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for candidate in [o for o in op.walk() if isinstance(o, jlax.LaxOp) and o.PRIMITIVE in ("mul", "div")]:
            _hoist_scalar_scale(candidate, self.weights)
        for candidate in [o for o in op.walk() if isinstance(o, jlax.LaxOp)
                          and o.PRIMITIVE in ("dot_general", "conv_general_dilated")]:
            _fold_one(candidate, self.weights)
        dce(op)  # the constants the rewritten ops consumed


@dataclass(frozen=True)
class FoldBatchNormPass(FoldAffinePass):
    name = "fold-batchnorm"


__all__ = ["FoldAffinePass", "FoldBatchNormPass", "per_channel"]
