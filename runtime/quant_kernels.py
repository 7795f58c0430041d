"""Kernels of the ``jquant`` ops (registered into runtime.kernels)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxlite.dialects import fused, int8, quant
from jaxlite.dialects.params import decode_all
from jaxlite.runtime import xla_int8
from jaxlite.runtime.kernels import Kernel, register


def params_of(op: quant.QuantizedMatmulOp) -> dict:
    params = {k: None for k in op.OPTIONAL_PARAMS}
    params.update(decode_all(op.primitive_params()))
    return params


def _accumulate(op: quant.QuantizedMatmulOp):
    """(weights, xq, wq) -> int32 accumulator, with XLA's int8 dot_general."""
    params = params_of(op)
    if op.PRIMITIVE == "dot_general":
        dims = params["dimension_numbers"]
        return lambda weights, xq, wq: xla_int8.int8_dot(xq, wq, dims)
    return lambda weights, xq, wq: xla_int8.int8_conv(xq, wq, **params)


def gemm_shape(op: quant.QuantizedMatmulOp) -> tuple[int, int] | None:
    """(K, N) when the op's int8 product is one GEMM by a [K, N] weight matrix, else None
    (batched dots, grouped convs). A dot contracting other than the input's last dims reads
    it transposed (runtime/native_kernels.py); an input-dilated (transposed) conv is one
    GEMM over the interior-padded input."""
    params = params_of(op)
    w_shape = tuple(op.rhs.type.get_shape())
    if op.PRIMITIVE == "conv_general_dilated":
        if params["feature_group_count"] != 1 or params["batch_group_count"] != 1:
            return None
        n = w_shape[params["dimension_numbers"].rhs_spec[0]]
        return int(np.prod(w_shape)) // n, n
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    if lb or rb:
        return None
    k = int(np.prod([w_shape[d] for d in rc]))
    return k, int(np.prod(w_shape)) // k


def weight_2d(op: quant.QuantizedMatmulOp, wq: np.ndarray) -> np.ndarray:
    """The [K, N] matrix of ``gemm_shape`` (which must not be None): for a dot, the weight's
    contracting dims first (in the order they pair with the input's), then its free dims."""
    if op.PRIMITIVE == "conv_general_dilated":
        return xla_int8.im2col_weight(wq, params_of(op)["dimension_numbers"])
    (_, rc), _ = params_of(op)["dimension_numbers"]
    free = [d for d in range(wq.ndim) if d not in rc]
    return np.transpose(wq, (*rc, *free)).reshape(gemm_shape(op))


def out_axis_of_w(op: quant.QuantizedMatmulOp, out_ndim: int) -> int:
    """Axis of the result along which the kernel's per-channel scale runs."""
    w_axis = op.w_axis
    if w_axis < 0:
        return -1
    params = params_of(op)
    if op.PRIMITIVE == "conv_general_dilated":
        return params["dimension_numbers"].out_spec[1]
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    rhs_ndim = len(op.rhs.type.get_shape())
    lhs_ndim = len(op.lhs.type.get_shape())
    lhs_free = [d for d in range(lhs_ndim) if d not in lc and d not in lb]
    rhs_free = [d for d in range(rhs_ndim) if d not in rc and d not in rb]
    return len(lb) + len(lhs_free) + rhs_free.index(w_axis)


@register(quant.QuantizeOp)
def _quantize(op: quant.QuantizeOp) -> Kernel:
    axis = op.attributes["axis"].data
    return lambda weights, x, scale: (int8.quantize(x, int8.expand(scale, x.ndim, axis)),)


@register(quant.DequantizeOp)
def _dequantize(op: quant.DequantizeOp) -> Kernel:
    axis = op.attributes["axis"].data
    return lambda weights, q, scale: (q.astype(jnp.float32) * int8.expand(scale, q.ndim, axis),)


@register(quant.UpcastOp)
def _upcast(op: quant.UpcastOp) -> Kernel:
    return lambda weights, w: (w.astype(jnp.float32),)


@register(quant.DynamicMatmulOp)
def _dynamic(op: quant.DynamicMatmulOp) -> Kernel:
    return _dynamic_kernel(op, _accumulate(op))


def _dynamic_kernel(op: quant.DynamicMatmulOp, acc_fn) -> Kernel:
    params = params_of(op)
    activation = op.activation
    out_ndim = len(op.result.type.get_shape())
    w_out_axis = out_axis_of_w(op, out_ndim)
    if op.PRIMITIVE == "dot_general":
        (lc, _), _batch = params["dimension_numbers"]
        reduce_axes = tuple(lc)  # one scale per row: max |x| over the contracting dims
    else:
        batch_axis = params["dimension_numbers"].lhs_spec[0]
        lhs_ndim = len(op.lhs.type.get_shape())
        reduce_axes = tuple(d for d in range(lhs_ndim) if d != batch_axis)

    def run(weights, x, wq, w_scale, bias=None):
        x_scale = int8.safe_scale(jnp.max(jnp.abs(x), axis=reduce_axes, keepdims=True))
        acc = acc_fn(weights, int8.quantize(x, x_scale), wq).astype(jnp.float32)
        if op.PRIMITIVE == "dot_general":   # per row: lhs free dims lead the result
            row = jnp.squeeze(x_scale, axis=reduce_axes)
            row = row.reshape(row.shape + (1,) * (out_ndim - row.ndim))
        else:                               # per sample: batch dim of the result
            n_axis = params["dimension_numbers"].out_spec[0]
            row = int8.expand(x_scale.reshape(-1), out_ndim, n_axis)
        y = acc * row * int8.expand(w_scale, out_ndim, w_out_axis)
        return (fused.fused_epilogue(y, bias, activation),)
    return run


def act_dot_layout(op: quant.DynamicActDotOp):
    """(lhs perm, rhs perm, (B, M, N, K) sizes, result shape): the transposes that make a
    dot between activations a batch of [M, K] x [N, K]^T products (dot_general's result
    order is batch, lhs free, rhs free)."""
    (lc, rc), (lb, rb) = params_of(op)["dimension_numbers"]
    ls, rs = tuple(op.lhs.type.get_shape()), tuple(op.rhs.type.get_shape())
    lf = [d for d in range(len(ls)) if d not in lc and d not in lb]
    rf = [d for d in range(len(rs)) if d not in rc and d not in rb]
    size = lambda shape, dims: int(np.prod([shape[d] for d in dims]))  # noqa: E731
    sizes = (size(ls, lb), size(ls, lf), size(rs, rf), size(ls, lc))
    return (*lb, *lf, *lc), (*rb, *rf, *rc), sizes, tuple(op.result.type.get_shape())


def act_dot_scales(x, y, op: quant.DynamicActDotOp):
    """Per-row scales of both operands in the [B, M, K] / [B, N, K] layout."""
    lhs_perm, rhs_perm, (b, m, n, k), _ = act_dot_layout(op)
    x = jnp.transpose(x, lhs_perm).reshape(b, m, k)
    y = jnp.transpose(y, rhs_perm).reshape(b, n, k)
    xs = int8.safe_scale(jnp.max(jnp.abs(x), axis=2, keepdims=True))
    ys = int8.safe_scale(jnp.max(jnp.abs(y), axis=2, keepdims=True))
    return x, y, xs, ys


@register(quant.DynamicActDotOp)
def _dynamic_act_dot(op: quant.DynamicActDotOp) -> Kernel:
    *_, out_shape = act_dot_layout(op)

    def run(weights, x, y):
        x, y, xs, ys = act_dot_scales(x, y, op)
        acc = xla_int8.int8_dot(int8.quantize(x, xs), int8.quantize(y, ys), (((2,), (2,)), ((0,), (0,))))
        return ((acc.astype(jnp.float32) * xs * jnp.swapaxes(ys, 1, 2)).reshape(out_shape),)
    return run


@register(quant.StaticMatmulOp)
def _static(op: quant.StaticMatmulOp) -> Kernel:
    return _static_kernel(op, _accumulate(op))


def _static_kernel(op: quant.StaticMatmulOp, acc_fn) -> Kernel:
    activation = op.activation
    out_ndim = len(op.result.type.get_shape())
    w_out_axis = out_axis_of_w(op, out_ndim)
    has_bias = op.bias is not None
    requantize = op.out_scale is not None

    def run(weights, xq, wq, x_scale, w_scale, *rest):
        bias = rest[0] if has_bias else None
        if xq.dtype != jnp.int8:  # a float lhs: the input quantize folded into the op
            xq = int8.quantize(xq, jnp.reshape(x_scale, ()))
        acc = acc_fn(weights, xq, wq).astype(jnp.float32)
        y = acc * (jnp.reshape(x_scale, ()) * int8.expand(w_scale, out_ndim, w_out_axis))
        y = fused.fused_epilogue(y, bias, activation)
        if requantize:
            return (int8.quantize(y, jnp.reshape(rest[-1], ())),)
        return (y,)
    return run

