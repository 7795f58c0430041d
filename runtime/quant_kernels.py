"""The ``jquant`` ops on the ``xla`` target (XLA's int8 dot_general, convolutions as im2col),
weights stored in low precision expanded once at load, and the ``xla-float16`` target
(dots and convolutions computed in float16: the GPU's default for float16 models)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxlite.dialects import fused, int8, jlax, quant
from jaxlite.dialects.params import encode
from jaxlite.runtime import xla_int8
from jaxlite.runtime.gemm_layout import act_dot_layout, out_axis_of_w
from jaxlite.runtime.registry import Kernel, LoweringContext, register, register_target
from jaxlite.runtime.xla_kernels import evaluated, window_extremum

XLA_FLOAT16 = register_target(
    "xla-float16", "dots and convolutions on float16 / bfloat16 weights computed in that type with float32 "
                   "accumulation (default on GPUs; compile(float16_compute=True) elsewhere)")
_HALF = {"f16": jnp.dtype(jnp.float16), "bf16": jnp.dtype(jnp.bfloat16)}


def _accumulate(op: quant.QuantizedMatmulOp, **overrides):
    """(weights, xq, wq) -> int32 accumulator, with XLA's int8 dot_general (a convolution's
    parameters replaced by ``overrides``)."""
    params = {**op.params(), **overrides}
    if op.PRIMITIVE == "dot_general":
        dims = params["dimension_numbers"]
        return lambda weights, xq, wq: xla_int8.int8_dot(xq, wq, dims)
    return lambda weights, xq, wq: xla_int8.int8_conv(xq, wq, **params)


@register(quant.DequantizeOp, quant.UpcastOp)
def _from_low_precision(op: quant.DequantizeOp | quant.UpcastOp, ctx: LoweringContext):
    """A weight stored in low precision but used as float32 (int8-weights, float16 on CPU):
    expanded once when the model is placed, as TFLite does at load, not on every call."""
    sources = [v.owner for v in op.operands]
    if not all(isinstance(w, jlax.WeightOp) for w in sources):
        return evaluated(op)
    names = [w.weight_name for w in sources]

    def make():
        return np.asarray(op.evaluate(*[np.asarray(ctx.weight(n)) for n in names])[0])

    shape = tuple(op.results[0].type.get_shape())
    axis = f"@{op.axis}" if isinstance(op, quant.DequantizeOp) else ""
    name = ctx.derive(f"{'|'.join(names)}{axis}@float32", int(np.prod(shape)) * 4, make)
    return Kernel(lambda weights, *_: (weights[name],), unread=frozenset(range(len(names))))


@register(quant.UpcastOp, target="xla-float16")
def _upcast_in_half_programs(op: quant.UpcastOp, ctx: LoweringContext):
    """A float16 / bfloat16 weight is kept as an op (no float32 copy at load): the dots
    that compute in its type convert it back, which XLA folds away."""
    return evaluated(op)


def _half_weight(op):
    """The float16 / bfloat16 type of the weight a dot/conv reads through jquant.upcast, else None."""
    up = op.operands[1].owner
    if isinstance(up, quant.UpcastOp) and isinstance(up.input.owner, jlax.WeightOp):
        return _HALF.get(str(up.input.type.get_element_type()))
    return None


@register(fused.FusedOp, target="xla-float16")
@register(jlax.PRIMITIVE_OPS["dot_general"], jlax.PRIMITIVE_OPS["conv_general_dilated"], target="xla-float16")
def _half_matmul(op, ctx: LoweringContext):
    """Compute in the weight's float16 / bfloat16 with float32 accumulation."""
    half = _half_weight(op)
    if half is None:
        return None
    activation = op.activation if isinstance(op, fused.FusedOp) else "none"
    accumulate = encode(jnp.dtype(jnp.float32))

    def run(weights, lhs, rhs, bias=None):
        y = op.bind(lhs.astype(half), rhs.astype(half), preferred_element_type=accumulate)[0]
        return (fused.fused_epilogue(y, bias, activation),)
    return run


@register(quant.DynamicMatmulOp)
def _dynamic(op: quant.DynamicMatmulOp, ctx: LoweringContext):
    return _dynamic_kernel(op, weight_sums(op, ctx))


def weight_sums(op: quant.DynamicMatmulOp, ctx: LoweringContext):
    """(weights, wq) -> int32 sums of the int8 weight over what each result element
    contracts, shaped to broadcast against the result: the zero-point correction's
    ``zero * sum(w)``. Made once at load for a stored weight, else (or where the kernel runs
    outside a placed program: the quantization report's single layers) on every call."""
    out_ndim = len(op.result.type.get_shape())
    rhs_shape = tuple(op.rhs.type.get_shape())
    if op.PRIMITIVE == "dot_general":
        d = op.dot_dims()
        keep = [rhs_shape[i] for i in (*d.rhs_batch, *d.rhs_free)]
        size = int(np.prod(keep))

        def sums(w):  # [batch..., 1 per lhs free dim, rhs free...]
            w = jnp.sum(jnp.asarray(w, jnp.int32), axis=d.rhs_contract, keepdims=True)
            w = jnp.transpose(w, (*d.rhs_batch, *d.rhs_free, *d.rhs_contract))
            return w.reshape(keep[:len(d.rhs_batch)] + [1] * len(d.lhs_free) + keep[len(d.rhs_batch):])
    else:
        dn = op.conv_dims()
        out_axis = dn.out_spec[1]
        size = rhs_shape[dn.rhs_spec[0]]

        def sums(w):  # per output channel
            w = jnp.asarray(w, jnp.int32)
            return int8.expand(jnp.sum(w, axis=tuple(i for i in range(w.ndim) if i != dn.rhs_spec[0])),
                               out_ndim, out_axis)
    if isinstance(op.rhs.owner, jlax.WeightOp):
        name = op.rhs.owner.weight_name
        layout = op.params()["dimension_numbers"]
        derived = ctx.derive(f"{name}@sums:{layout}", 4 * size, lambda: np.asarray(sums(np.asarray(ctx.weight(name)))),
                             replicated=True)
        return lambda weights, wq: weights[derived] if derived in weights else sums(wq)
    return lambda weights, wq: sums(wq)


def _dynamic_kernel(op: quant.DynamicMatmulOp, weight_sums):
    """Per row (dots: over the contracting dims) or per sample (convolutions: over all its
    values) asymmetric int8 of the float input (``int8.row_params``), the int8 products,
    minus zero * sum(w), rescaled. A convolution's padding and input dilation are applied to
    the float input first: zeros quantize to the zero point, so the window sums stay whole."""
    activation = op.activation
    out_ndim = len(op.result.type.get_shape())
    w_out_axis = out_axis_of_w(op, out_ndim)
    if op.PRIMITIVE == "dot_general":
        d = op.dot_dims()
        reduce_axes = d.lhs_contract
        row_perm = (*d.lhs_batch, *d.lhs_free, *d.lhs_contract)
        rows = len(d.lhs_batch) + len(d.lhs_free)
        acc_fn = _accumulate(op)

        def per_row(v):  # [lhs batch..., lhs free..., 1 per rhs free dim]: the result's layout
            v = jnp.transpose(v, row_perm)
            return v.reshape(v.shape[:rows] + (1,) * (out_ndim - rows))

        def quantize(x, scale, zero):
            return int8.quantize_asymmetric(x, scale, zero)
    else:
        dn = op.conv_dims()
        lhs_ndim = len(op.lhs.type.get_shape())
        reduce_axes = tuple(d for d in range(lhs_ndim) if d != dn.lhs_spec[0])
        edges = [(0, 0, 0)] * lhs_ndim
        params = op.params()
        for axis, (lo, hi), dil in zip(dn.lhs_spec[2:], params["padding"], params["lhs_dilation"], strict=True):
            edges[axis] = (lo, hi, dil - 1)
        nsp = lhs_ndim - 2

        def per_row(v):  # per sample, on the result's batch axis
            return int8.expand(v.reshape(-1), out_ndim, dn.out_spec[0])

        def quantize(x, scale, zero):
            return int8.quantize_asymmetric(lax.pad(x, np.float32(0), edges), scale, zero)
        acc_fn = _accumulate(op, padding=((0, 0),) * nsp, lhs_dilation=(1,) * nsp)

    def run(weights, x, wq, w_scale, bias=None):
        scale, zero = int8.row_params(x, reduce_axes)
        acc = acc_fn(weights, quantize(x, scale, zero), wq) - per_row(zero) * weight_sums(weights, wq)
        y = acc.astype(jnp.float32) * per_row(scale) * int8.expand(w_scale, out_ndim, w_out_axis)
        return (fused.fused_epilogue(y, bias, activation),)
    return run


@register(quant.DynamicActDotOp)
def _dynamic_act_dot(op: quant.DynamicActDotOp, ctx: LoweringContext):
    """Both sides' rows asymmetric (``int8.row_params``: attention's probabilities, on
    whichever side einsum puts them, are all >= 0), in the [B, M, K] / [B, N, K] layout:
    acc = sum (x - x_zero)(y - y_zero), from the int8 dot and the code sums."""
    lhs_perm, rhs_perm, (b, m, n, k), out_shape = act_dot_layout(op)

    def run(weights, x, y):
        x = jnp.transpose(x, lhs_perm).reshape(b, m, k)
        y = jnp.transpose(y, rhs_perm).reshape(b, n, k)
        xs, x_zero = int8.row_params(x, (2,))
        ys, y_zero = int8.row_params(y, (2,))
        xq, yq = int8.quantize_asymmetric(x, xs, x_zero), int8.quantize_asymmetric(y, ys, y_zero)
        acc = xla_int8.int8_dot(xq, yq, (((2,), (2,)), ((0,), (0,))))
        x_sums = jnp.sum(xq.astype(jnp.int32), axis=2, keepdims=True) - k * x_zero  # sum (x - x_zero)
        acc = acc - x_zero * jnp.sum(yq.astype(jnp.int32), axis=2)[:, None, :] - x_sums * jnp.swapaxes(y_zero, 1, 2)
        return ((acc.astype(jnp.float32) * xs * jnp.swapaxes(ys, 1, 2)).reshape(out_shape),)
    return run


@register(quant.StaticMatmulOp)
def _static(op: quant.StaticMatmulOp, ctx: LoweringContext):
    return _static_kernel(op, _accumulate(op))


def reads_nan_code(op: quant.StaticMatmulOp):
    """xq -> where the result reads a NAN_CODE input (bool, broadcastable to the result): a
    dot's rows that hold one among their contracted values; a convolution's output
    positions whose window (padding, strides and dilations as the op's) covers one, in any
    channel -- a superset for grouped convolutions."""
    out_ndim = len(op.result.type.get_shape())
    if op.PRIMITIVE == "dot_general":
        dims = op.dot_dims()
        rows = (*dims.lhs_batch, *dims.lhs_free)

        def dot_rows(xq):
            bad = jnp.transpose(xq == int8.NAN_CODE, (*rows, *dims.lhs_contract))
            bad = jnp.any(bad, axis=tuple(range(len(rows), xq.ndim)))
            return bad.reshape(bad.shape + (1,) * (out_ndim - bad.ndim))
        return dot_rows

    params = op.params()
    dn = op.conv_dims()
    w_shape = tuple(op.rhs.type.get_shape())
    if params["batch_group_count"] != 1:  # batch groups mix samples: any code poisons all
        return lambda xq: jnp.any(xq == int8.NAN_CODE)
    lhs_layout = (dn.lhs_spec[0], *dn.lhs_spec[2:])
    out_layout = np.argsort((dn.out_spec[0], *dn.out_spec[2:], dn.out_spec[1]))

    def conv_positions(xq):
        bad = jnp.transpose(jnp.any(xq == int8.NAN_CODE, axis=dn.lhs_spec[1]).astype(jnp.int8),
                            np.argsort(np.argsort(lhs_layout)))  # [N, spatial...]
        bad = lax.reduce_window(bad, np.int8(0), lax.max, (1, *[w_shape[d] for d in dn.rhs_spec[2:]]),
                                (1, *params["window_strides"]), ((0, 0), *params["padding"]),
                                base_dilation=(1, *params["lhs_dilation"]),
                                window_dilation=(1, *params["rhs_dilation"]))
        return jnp.transpose(bad[..., None] > 0, out_layout)
    return conv_positions


def _static_kernel(op: quant.StaticMatmulOp, acc_fn):
    activation = op.activation
    out_ndim = len(op.result.type.get_shape())
    w_out_axis = out_axis_of_w(op, out_ndim)
    has_bias = op.bias is not None
    requantize = op.out_scale is not None
    nan_rows = reads_nan_code(op)

    def run(weights, xq, wq, x_scale, w_scale, *rest):
        bias = rest[0] if has_bias else None
        if xq.dtype != jnp.int8:  # a float lhs: the input quantize folded into the op
            xq = int8.quantize(xq, jnp.reshape(x_scale, ()))
        acc = acc_fn(weights, xq, wq).astype(jnp.float32)
        y = acc * (jnp.reshape(x_scale, ()) * int8.expand(w_scale, out_ndim, w_out_axis))
        y = jnp.where(nan_rows(xq), jnp.float32(jnp.nan), y)
        y = fused.fused_epilogue(y, bias, activation)
        if requantize:
            return (int8.quantize(y, jnp.reshape(rest[-1], ())),)
        return (y,)
    return run



@register(quant.CodeReduceWindowMaxOp)
def _code_window_max(op: quant.CodeReduceWindowMaxOp, ctx: LoweringContext):
    """Max pooling of int8 codes as the float pooling's strided slices, on ordered codes."""
    run = window_extremum(op)
    if run is None:
        return None
    return lambda weights, q: tuple(int8.from_ordered(u) for u in run(weights, int8.ordered(q)))
