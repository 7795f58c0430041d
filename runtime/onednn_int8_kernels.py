"""The ``cpu-onednn-int8`` target: int8 dense layers and convolutions (``dynamic`` and
``int8`` models) on oneDNN's AMX kernels, on CPUs with AMX-INT8, where they multiply several
times faster than jaxlite's own VNNI kernels (docs/ARCHITECTURE.md has the figures).

Each op is one oneDNN primitive with its weight packed at load. Calibrated (``int8``) inputs
are int8 codes of one scale, folded into the per-column weight scales, and oneDNN fuses the
rescale, bias, activation and, between int8 layers, the requantize. ``dynamic`` rows are
quantized per row (convolutions: per sample) by the native ``quantize_rows``, asymmetric as
on every other path: dense layers take oneDNN's int32 products through jaxlite's own
epilogue (per-row zero points), convolutions fold the sample's zero point into their bias.
Attention's products of two activations quantize both sides per row in the kernel and take
oneDNN's batched int8 product through the same epilogue. NaN's code (-128) in an int8 input
makes the rows / output positions that read it NaN, as the native kernels do. Products
oneDNN would not run on AMX (a few rows), and small ones, stay on the native target.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxlite.dialects import fused, int8, jlax, quant
from jaxlite.runtime import cpu
from jaxlite.runtime import native_calls as native
from jaxlite.runtime import onednn_calls as onednn
from jaxlite.runtime.gemm_layout import (
    act_dot_operands,
    array_module,
    column_axes,
    dot_rows,
    gemm_shape,
    per_column,
    varies_only_by_column,
    weight_2d,
    weight_scale_columns,
)
from jaxlite.runtime.onednn_kernels import EMBED_PACKED_MAX_BYTES, conv_layout
from jaxlite.runtime.registry import Kernel, LoweringContext, register, register_target


def _unavailable() -> str | None:
    if "amx_int8" not in cpu.features():
        return "needs AMX-INT8 (elsewhere jaxlite's own int8 kernels serve)"
    why = onednn.unavailable() or native.unavailable()
    return None if why is None else f"needs oneDNN and the native kernels: {why}"


CPU_ONEDNN_INT8 = register_target(
    "cpu-onednn-int8", "int8 dense layers and convolutions on oneDNN's AMX kernels, scales, bias, activation "
                       "and requantize fused, weights packed at load", _unavailable, preference=1)
# Products smaller than this (multiply-adds) stay on the native kernels: oneDNN's call costs
# more than their arithmetic saves
MIN_MACS = 1 << 18


@register(quant.QuantizedMatmulOp, target=CPU_ONEDNN_INT8.name)
def _int8_matmul(op: quant.QuantizedMatmulOp, ctx: LoweringContext):
    """An int8 dense layer (a weight that is one [K, N] matrix) or 1-D / 2-D convolution by
    a weight, as one oneDNN primitive where oneDNN runs it on AMX."""
    if not isinstance(op.rhs.owner, jlax.WeightOp):
        return None
    is_conv = op.PRIMITIVE == "conv_general_dilated"
    is_dynamic = isinstance(op, quant.DynamicMatmulOp)
    out_shape = tuple(op.result.type.get_shape())
    cols = column_axes(op)
    has_bias = op.bias is not None
    in_kernel = not has_bias or varies_only_by_column(tuple(op.bias.type.get_shape()), out_shape, cols)
    activation = op.activation if in_kernel else "none"
    requantize = not is_dynamic and op.out_scale is not None
    mode = "dynamic" if is_dynamic else "requantize" if requantize and in_kernel else "static"
    kernel_bias = has_bias and in_kernel
    name = op.rhs.owner.weight_name
    if is_conv:
        layout = conv_layout(op)
        if layout is None or (is_dynamic and layout.pads):  # (the padding would need the zero point)
            return None
        w_shape = tuple(op.rhs.type.get_shape())
        macs = int(np.prod(layout.out_shape)) * int(np.prod(w_shape)) // w_shape[op.conv_dims().rhs_spec[0]]
        key = f"{name}@onednn-int8:{layout.in_shape}:{layout.geometry}:{int(kernel_bias)}:{activation}:{mode}"
        describe = lambda: onednn.int8_conv_info(layout.in_shape, layout.geometry,  # noqa: E731
                                                 kernel_bias, activation, mode)
        make = lambda: onednn.int8_conv_pack(layout.oihw(np.asarray(ctx.weight(name))), layout.in_shape,  # noqa: E731
                                             layout.geometry, kernel_bias, activation, mode)
    else:
        if (shape := gemm_shape(op)) is None:
            return None
        k, n = shape
        m, rows = dot_rows(op)
        macs = m * k * n
        key = f"{name}@onednn-int8:{m}x{k}x{n}:{int(kernel_bias)}:{activation}:{mode}"
        describe = lambda: onednn.int8_matmul_info(m, k, n, kernel_bias, activation, mode)  # noqa: E731
        make = lambda: onednn.int8_matmul_pack(weight_2d(op, np.asarray(ctx.weight(name))), m,  # noqa: E731
                                               kernel_bias, activation, mode)
    if macs < MIN_MACS:
        return None
    try:
        implementation, nbytes = describe()
    except onednn.OnednnRefused:
        return None
    if "amx" not in implementation:
        return None
    packed = ctx.derive(key, nbytes, make, embeddable=nbytes <= EMBED_PACKED_MAX_BYTES)
    if is_dynamic:  # the weight's sums per output column / channel (zero points' correction)
        def column_sums():
            w = np.asarray(ctx.weight(name))
            if is_conv:
                return layout.oihw(w).reshape(layout.geometry[0], -1).sum(axis=1, dtype=np.int32)
            return native.column_sums(weight_2d(op, w))
        colsum = ctx.derive(f"{key}@colsum", 4 * (layout.geometry[0] if is_conv else n), column_sums)
    def epilogue(bias, out_scale) -> dict:
        return dict(bias=per_column(bias, out_shape, cols) if kernel_bias else None, activation=activation,
                    out_scale=out_scale if mode == "requantize" else None)

    def finish(y, bias, out_scale):
        """What the kernel left undone (a bias that varies along rows, and what follows it)."""
        if not in_kernel:
            y = fused.fused_epilogue(y, bias, op.activation)
            if requantize:
                y = int8.quantize(y, jnp.reshape(out_scale, ()))
        return y

    if is_conv:
        def run_conv(weights, x, col_scale, bias, out_scale):
            y = onednn.int8_conv(layout.prepare(x), weights[packed], layout.geometry, layout.out_shape, col_scale,
                                 **epilogue(bias, out_scale))
            return finish(layout.finish(y), bias, out_scale)

        if is_dynamic:
            def run_dynamic_conv(weights, x, _wq, w_scale, bias=None):
                x = layout.spread(x)  # quantized per sample before cropping, as on the other paths
                codes, scale, zero = native.quantize_rows(x.reshape(x.shape[0], -1))
                y = onednn.int8_conv(layout.fit(codes.reshape(x.shape)), weights[packed], layout.geometry,
                                     layout.out_shape, weight_scale_columns(op, w_scale), colsum=weights[colsum],
                                     sample_scale=scale, sample_zero=zero, **epilogue(bias, None))
                return (finish(layout.finish(y), bias, None),)
            return Kernel(run_dynamic_conv, unread=frozenset({1}), native=True)
        run_matmul = run_conv
    else:
        def run_matmul(weights, x, col_scale, bias, out_scale, x_scale=None):
            y = onednn.int8_matmul(rows(x), weights[packed], n, col_scale, x_scale=x_scale,
                                   **epilogue(bias, out_scale))
            return finish(y.reshape(out_shape), bias, out_scale)

        if is_dynamic:
            def run_dynamic_dot(weights, x, _wq, w_scale, bias=None):
                codes, scale, zero = native.quantize_rows(rows(x))  # shared by dots of the same rows (CSE)
                y = onednn.int8_matmul(codes, weights[packed], n, weight_scale_columns(op, w_scale), colsum=weights[colsum],
                                       row_scale=scale, row_zero=zero, **epilogue(bias, None))
                return (finish(y.reshape(out_shape), bias, None),)
            return Kernel(run_dynamic_dot, unread=frozenset({1}), native=True)

    def run_static(weights, x, _wq, x_scale, w_scale, *rest):  # x: int8, or float to quantize
        bias = rest[0] if has_bias else None
        out_scale = rest[-1] if requantize else None
        xp = array_module(x_scale, w_scale)
        x_scale = xp.reshape(xp.asarray(x_scale), ())
        col_scale = x_scale * weight_scale_columns(op, w_scale)
        if x.dtype != jnp.float32:
            return (run_matmul(weights, x, col_scale, bias, out_scale),)
        if is_conv:
            return (run_matmul(weights, int8.quantize(x, x_scale), col_scale, bias, out_scale),)
        return (run_matmul(weights, x, col_scale, bias, out_scale, x_scale=x_scale),)  # quantized in the kernel
    return Kernel(run_static, unread=frozenset({1}), native=True)


@register(quant.DynamicActDotOp, target=CPU_ONEDNN_INT8.name)
def _act_dot(op: quant.DynamicActDotOp, ctx: LoweringContext):
    """``jquant.dynamic_act_dot`` (attention's two products) as one call: both sides' rows
    quantized in the kernel, oneDNN's batched int8 product, the native epilogue; operands read
    in place where strides can express it."""
    sizes, out_shape, operands = act_dot_operands(op)
    b, m, n, k = sizes
    if b * m * n * k < MIN_MACS:
        return None
    try:
        if "amx" not in onednn.int8_batch_matmul_info(b, m, k, n):
            return None
    except onednn.OnednnRefused:
        return None

    def run(weights, x, y):
        x, y, strides = operands(x, y)
        return (onednn.int8_act_matmul(x, y, sizes=sizes, strides=strides).reshape(out_shape),)
    return Kernel(run, native=True)
