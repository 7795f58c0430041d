"""A dot or convolution by a weight seen as one GEMM: its [K, N] weight matrix, which axes
of the result its N columns span, and the per-column vectors (scales, bias) of its epilogue.
Shared by the kernel targets that run such ops as one GEMM call (the XLA int8 path, the
native int8 kernels, oneDNN)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlite.dialects import fused, int8, jlax, quant
from jaxlite.runtime import xla_int8


def weight_source(op, ctx, keep_bfloat16: bool):
    """(key, load -> host array, compute dtype) of a float dot/conv's rhs where it is a value
    known at load -- a float32 weight, one stored in float16 / bfloat16 (``jquant.upcast``) or
    int8 (``jquant.dequantize``) -- else None. A bfloat16 weight stays bfloat16 with
    ``keep_bfloat16`` (computed in it), the rest is float32. ``ctx`` is read only by ``load``
    (None to ask whether there is a source)."""
    owner = op.operands[1].owner
    if isinstance(owner, jlax.WeightOp) and str(owner.result.type.get_element_type()) == "f32":
        name = owner.weight_name
        return name, lambda: np.asarray(ctx.weight(name)), "float32"
    if isinstance(owner, quant.UpcastOp) and isinstance(owner.input.owner, jlax.WeightOp):
        name = owner.input.owner.weight_name
        if str(owner.input.type.get_element_type()) == "bf16" and keep_bfloat16:
            return name, lambda: np.asarray(ctx.weight(name)), "bfloat16"
        return name, lambda: np.asarray(ctx.weight(name), np.float32), "float32"
    if isinstance(owner, quant.DequantizeOp) and all(isinstance(v.owner, jlax.WeightOp) for v in owner.operands):
        names = [v.owner.weight_name for v in owner.operands]
        return (f"{'|'.join(names)}@{owner.axis}",
                lambda: np.asarray(owner.evaluate(*[np.asarray(ctx.weight(n)) for n in names])[0]), "float32")
    return None


def gemm_shape(op) -> tuple[int, int] | None:
    """(K, N) when the op's product is one GEMM by a [K, N] weight matrix, else None
    (batched dots, grouped convs). A dot contracting other than the input's last dims reads
    it transposed (runtime/cpu_kernels.py); an input-dilated (transposed) conv is one
    GEMM over the interior-padded input."""
    w_shape = tuple(op.operands[1].type.get_shape())
    if op.PRIMITIVE == "conv_general_dilated":
        params = op.params()
        if params["feature_group_count"] != 1 or params["batch_group_count"] != 1:
            return None
        n = w_shape[op.conv_dims().rhs_spec[0]]
        return int(np.prod(w_shape)) // n, n
    dims = op.dot_dims()
    if dims.has_batch:
        return None
    k = int(np.prod([w_shape[d] for d in dims.rhs_contract]))
    return k, int(np.prod(w_shape)) // k


def weight_2d(op, wq: np.ndarray) -> np.ndarray:
    """The [K, N] matrix of ``gemm_shape`` (which must not be None): for a dot, the weight's
    contracting dims first (in the order they pair with the input's), then its free dims."""
    if op.PRIMITIVE == "conv_general_dilated":
        return xla_int8.im2col_weight(wq, op.conv_dims())
    dims = op.dot_dims()
    return np.transpose(wq, (*dims.rhs_contract, *dims.rhs_free)).reshape(gemm_shape(op))


def out_axis_of_w(op, out_ndim: int) -> int:
    """Axis of the result along which the kernel's per-channel scale runs."""
    w_axis = op.w_axis
    if w_axis < 0:
        return -1
    if op.PRIMITIVE == "conv_general_dilated":
        return op.conv_dims().out_spec[1]
    dims = op.dot_dims()
    return len(dims.lhs_batch) + len(dims.lhs_free) + dims.rhs_free.index(w_axis)


def column_axes(op) -> tuple[int, ...]:
    """Axes of the result that the GEMM's N columns span (the weight's output dims)."""
    out_ndim = len(op.results[0].type.get_shape())
    if op.PRIMITIVE == "conv_general_dilated":
        return (op.conv_dims().out_spec[1],)
    free = len(op.dot_dims().rhs_free)
    return tuple(range(out_ndim - free, out_ndim))


def dot_rows(op):
    """(M, rows) of a dot by a weight: its input as M rows of the contracted values,
    ``rows(x) -> [M, K]`` (contracted axes moved last where they are not already)."""
    lhs_shape = tuple(op.operands[0].type.get_shape())
    lc = tuple(op.dot_dims().lhs_contract)
    free = [d for d in range(len(lhs_shape)) if d not in lc]
    m = int(np.prod([lhs_shape[d] for d in free]))
    k = int(np.prod([lhs_shape[d] for d in lc]))
    transpose = lc != tuple(range(len(lhs_shape) - len(lc), len(lhs_shape)))

    def rows(x):
        return (jnp.transpose(x, (*free, *lc)) if transpose else x).reshape(m, k)
    return m, rows


def split_epilogue(op, out_shape, cols):
    """(activation, bias value or None, whether a GEMM kernel applies them): a jfuse op's bias
    and activation go into the kernel unless the bias varies along rows (XLA's then)."""
    activation = op.activation if isinstance(op, fused.FusedOp) else "none"
    bias = op.bias if isinstance(op, fused.FusedOp) else None
    in_kernel = bias is None or varies_only_by_column(tuple(bias.type.get_shape()), out_shape, cols)
    return activation, bias, in_kernel


def aligned(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return (1,) * (ndim - len(shape)) + tuple(shape)


def varies_only_by_column(shape, out_shape, cols) -> bool:
    return all(s == 1 for d, s in enumerate(aligned(shape, len(out_shape))) if d not in cols)


def array_module(*xs):
    """numpy where every x is a value known while tracing (an embedded weight), so that
    the vectors derived from it are computed once, here, and compiled in as constants: the
    same jnp code would run as XLA broadcasts on every call (3 per attention layer)."""
    return jnp if any(isinstance(x, jax.core.Tracer) for x in xs) else np


def per_column(x, out_shape: tuple[int, ...], cols: tuple[int, ...]):
    """[N] vector of a value that broadcasts against the result and varies only by column."""
    xp = array_module(x)
    x = xp.reshape(xp.asarray(x), aligned(np.shape(x), len(out_shape)))
    x = x[tuple(slice(None) if d in cols else 0 for d in range(len(out_shape)))]
    return xp.broadcast_to(x, [out_shape[d] for d in cols]).reshape(-1)


def weight_scale_columns(op, w_scale):
    """The [N] vector of a quantized op's weight scale (per channel or one value) along the
    GEMM's columns (``column_axes``)."""
    out_shape = tuple(op.results[0].type.get_shape())
    xp = array_module(w_scale)
    w_scale = xp.reshape(xp.asarray(w_scale), int8.expand_shape(len(out_shape), out_axis_of_w(op, len(out_shape))))
    return per_column(w_scale, out_shape, column_axes(op))


def strided_view(shape, batch_dims, row_dims, contract_dims) -> tuple[int, int] | None:
    """(batch stride, row stride) in elements that read the [B, M, K] view of a row-major
    array of ``shape`` in place -- its dims grouped as batch, rows, contracted -- or None
    when that view needs a transpose (K not contiguous, or a group whose dims do not merge
    into one stride)."""
    strides = [int(np.prod(shape[d + 1:])) for d in range(len(shape))]

    def merged(dims):  # the stride of a group of dims (size-1 dims ignored), or None
        dims = [d for d in dims if shape[d] != 1]
        for outer, inner in zip(dims, dims[1:], strict=False):
            if strides[outer] != strides[inner] * shape[inner]:
                return None
        return strides[dims[-1]] if dims else 0

    k_dims = [d for d in contract_dims if shape[d] != 1]
    k = int(np.prod([shape[d] for d in contract_dims]))
    if merged(k_dims) not in (0, 1) or (k_dims and k_dims[-1] != max(k_dims)) or \
            (k_dims and strides[k_dims[0]] * shape[k_dims[0]] != k):
        return None
    batch, rows = merged(batch_dims), merged(row_dims)
    if batch is None or rows is None:
        return None
    return batch, rows or k


# Products of two activations smaller than this (multiply-adds) stay XLA's: the transposes
# into a kernel's layout and the call would cost more than they save
MIN_ACTIVATION_DOT_MACS = 1 << 16


def act_dot_layout(op: quant.DynamicActDotOp | jlax.LaxOp):
    """(lhs perm, rhs perm, (B, M, N, K) sizes, result shape): the transposes that make a
    dot between activations (``jquant.dynamic_act_dot`` or a float ``dot_general``) a batch of [M, K] x [N, K]^T products (dot_general's result
    order is batch, lhs free, rhs free)."""
    d = op.dot_dims()
    ls, rs = tuple(op.operands[0].type.get_shape()), tuple(op.operands[1].type.get_shape())
    size = lambda shape, dims: int(np.prod([shape[i] for i in dims]))  # noqa: E731
    sizes = (size(ls, d.lhs_batch), size(ls, d.lhs_free), size(rs, d.rhs_free), size(ls, d.lhs_contract))
    return ((*d.lhs_batch, *d.lhs_free, *d.lhs_contract), (*d.rhs_batch, *d.rhs_free, *d.rhs_contract), sizes,
            tuple(op.results[0].type.get_shape()))


def act_dot_operands(op: quant.DynamicActDotOp | jlax.LaxOp):
    """((B, M, N, K), result shape, ``operands(x, y) -> (x, y, strides)``) of a dot between two
    activations as a kernel on the [B, M, K] / [B, N, K] layout takes it: each operand read in
    place where strides can express it (attention's q and k: no transposes), else transposed
    first; strides are (x's batch and row stride, y's) in elements."""
    lhs_perm, rhs_perm, (b, m, n, k), out_shape = act_dot_layout(op)
    d = op.dot_dims()
    views = []
    for shape, perm, contract, batch in ((tuple(op.operands[0].type.get_shape()), lhs_perm, d.lhs_contract, d.lhs_batch),
                                         (tuple(op.operands[1].type.get_shape()), rhs_perm, d.rhs_contract, d.rhs_batch)):
        free = [d for d in perm if d not in contract and d not in batch]
        views.append(strided_view(shape, list(batch), free, list(contract)))

    def operand(x, perm, view, rows):
        if view is not None:
            return x, view
        return jnp.transpose(x, perm).reshape(b, rows, k), (rows * k, k)

    def operands(x, y):
        x, (xb, xr) = operand(x, lhs_perm, views[0], m)
        y, (yb, yr) = operand(y, rhs_perm, views[1], n)
        return x, y, (xb, xr, yb, yr)
    return (b, m, n, k), out_shape, operands
