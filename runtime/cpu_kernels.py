"""The ``cpu-avx512vnni`` and ``cpu-avx2`` targets: jaxlite's native kernels
(runtime/native_calls.py), one build per ISA, the widest this CPU has.

An int8 dot whose weight is one [K, N] matrix (``quant_kernels.gemm_shape``), or a
convolution (patches gathered by the kernel), becomes one custom call that also applies the
rescale, the bias and the activation while the accumulators are in registers, and, for
full-integer models, requantizes to int8 -- so no int32 tensor ever reaches memory. Its
weight is packed once, when the model is placed. A bias that varies along rows is left to
XLA (with the activation after it). The float operations are those of the XLA kernels in
``quant_kernels``, in the same order. ``jquant.dynamic_act_dot`` (two activations) is one
call on a [B, M, K] x [B, N, K] layout; max pooling next to int8 layers, LayerNorm and
softmax are single calls too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from xdsl.ir import Operation

from jaxlite.dialects import fused, int8, jlax, quant
from jaxlite.runtime import native_calls as native
from jaxlite.runtime import onednn_calls as onednn
from jaxlite.runtime import xla_int8
from jaxlite.runtime.gemm_layout import (
    MIN_ACTIVATION_DOT_MACS,
    act_dot_operands,
    array_module,
    column_axes,
    dot_rows,
    gemm_shape,
    per_column,
    split_epilogue,
    varies_only_by_column,
    weight_2d,
    weight_scale_columns,
    weight_source,
)
from jaxlite.runtime.registry import Kernel, LoweringContext, register, register_target

CPU_AVX512_VNNI = register_target(
    "cpu-avx512vnni", "jaxlite's int8 GEMM/convolution, pooling and row kernels for AVX-512 VNNI",
    lambda: native.variant_unavailable("cpu-avx512vnni"))
CPU_AVX2 = register_target(
    "cpu-avx2", "the same kernels built for AVX2 + FMA (int8 dots exact as two 16-bit multiply-adds)",
    lambda: native.variant_unavailable("cpu-avx2"))
NATIVE_TARGETS = (CPU_AVX512_VNNI.name, CPU_AVX2.name)
# A packed weight is compiled into the program as a constant only while it is this small:
# XLA does nothing with a custom call's constant operand, so embedding saves only the
# argument's dispatch and keeps the bytes resident twice.
EMBED_PACKED_MAX_BYTES = 1024 * 1024


@register(quant.QuantizedMatmulOp, target=NATIVE_TARGETS)
def _quantized_matmul(op: quant.QuantizedMatmulOp, ctx: LoweringContext):
    """An int8 dot/conv on a weight that is one [K, N] GEMM matrix: packed at placement."""
    if not isinstance(op.rhs.owner, jlax.WeightOp) or (shape := gemm_shape(op)) is None:
        return None
    if isinstance(op, quant.DynamicConvOp) and not gathers_in_kernel(op):
        return None  # the XLA kernel pads the float input before quantizing (zero points)
    name = op.rhs.owner.weight_name
    k, n = shape

    def make(part: int):  # 0: packed weight, 1: column sums
        w2d = weight_2d(op, np.asarray(ctx.weight(name)))
        return native.packed_weight(w2d) if part == 0 else native.column_sums(w2d)

    nbytes = native.packed_bytes(k, n)
    # the [K, N] layout depends on how the op contracts the weight: one packed copy per layout
    layout = op.conv_dims().rhs_spec if op.PRIMITIVE == "conv_general_dilated" else op.dot_dims().rhs_contract
    key = f"{name}@{','.join(map(str, layout))}"
    packed = ctx.derive(f"{key}@vnni", nbytes, lambda: make(0), embeddable=nbytes <= EMBED_PACKED_MAX_BYTES)
    colsum = ctx.derive(f"{key}@colsum", 4 * n, lambda: make(1))
    return Kernel(native_kernel(op, packed, colsum, n), unread=frozenset({1}), native=True)


def gathers_in_kernel(op: quant.QuantizedMatmulOp) -> bool:
    """Whether the native convolution gathers ``op``'s patches itself: 1-D and 2-D
    convolutions without negative low padding."""
    padding = op.params()["padding"]
    return len(padding) in (1, 2) and all(lo >= 0 for lo, _ in padding)


def native_kernel(op: quant.QuantizedMatmulOp, packed: str, colsum: str, n: int):
    """Kernel of ``op`` whose [K, n] weight lives packed under ``packed``/``colsum``."""
    params = op.params()
    out_shape = tuple(op.result.type.get_shape())
    cols = column_axes(op)
    activation = op.activation
    is_conv = op.PRIMITIVE == "conv_general_dilated"
    is_dynamic = isinstance(op, quant.DynamicMatmulOp)
    has_bias = op.bias is not None
    native_bias = not has_bias or varies_only_by_column(tuple(op.bias.type.get_shape()), out_shape, cols)
    native_act = native_bias and native.activation_code(activation) is not None
    requantize = not is_dynamic and op.out_scale is not None
    rhs_shape = tuple(op.rhs.type.get_shape())  # the int8 weight itself is not placed
    # the float input of several dynamic dots (attention's q, k, v): quantized once
    shared_input = isinstance(op, quant.DynamicDotOp) and sum(
        isinstance(use.operation, quant.DynamicDotOp) and use.index == 0 for use in op.lhs.uses) > 1

    def finish(y, bias, out_scale):
        """What the kernel left undone: bias / activation / requantize in XLA."""
        if not native_act:
            y = fused.fused_epilogue(y, None if native_bias else bias, activation)
            if requantize:
                y = int8.quantize(y, jnp.reshape(out_scale, ()))
        return y

    def epilogue(bias, out_scale) -> dict:
        """The kernel's share of the epilogue (``finish`` does the rest)."""
        return dict(bias=per_column(bias, out_shape, cols) if has_bias and native_bias else None,
                    out_scale=out_scale if requantize and native_act else None,
                    activation=activation if native_act else "none")

    def gemm(weights, a, col_scale, row_scale, bias, out_scale, x_scale=None):
        """One native call on the [M, K] rows ``a`` (int8, or float: quantized in the kernel
        per row, or with ``x_scale``). Float rows that other dynamic dots read too are
        quantized by a call of their own, which XLA runs once for all of them (CSE)."""
        kw = epilogue(bias, out_scale)
        row_zero = None
        if a.dtype == jnp.float32 and x_scale is None and shared_input:
            a, row_scale, row_zero = native.quantize_rows(a)
        if a.dtype == jnp.float32:
            return native.dynamic_gemm(a, weights[packed], weights[colsum], col_scale, n, x_scale=x_scale, **kw)
        return native.quantized_gemm(a, weights[packed], weights[colsum], n, col_scale,
                                     row_scale=row_scale, row_zero=row_zero, **kw)

    def run_matmul(weights, x, col_scale, bias, out_scale, x_scale=None):
        if is_conv and in_kernel_im2col:
            return conv_in_kernel(weights, x, col_scale, bias, out_scale, x_scale)
        if x_scale is not None and is_conv:
            x = int8.quantize(x, x_scale)  # im2col in XLA takes int8
        if is_conv:
            def matmul(a):  # im2col rows
                return gemm(weights, a, col_scale, None, bias, out_scale)
            return xla_int8.int8_conv(x, None, matmul=matmul, rhs_shape=rhs_shape, **params)
        lc = op.dot_dims().lhs_contract
        free_dims = [d for d in range(x.ndim) if d not in lc]
        if tuple(lc) != tuple(range(x.ndim - len(lc), x.ndim)):  # contracted dims last, in order
            x = jnp.transpose(x, (*free_dims, *lc))
        free = x.shape[:len(free_dims)]
        a = x.reshape(int(np.prod(free)) if free else 1, -1)
        return gemm(weights, a, col_scale, None, bias, out_scale, x_scale).reshape(out_shape)

    if is_conv:
        dn = params["dimension_numbers"]
        nsp = len(dn.lhs_spec) - 2
        in_kernel_im2col = gathers_in_kernel(op)
        def as_2d(values, fill=1):  # a 1-D convolution runs as height 1
            return [fill] * (2 - nsp) + [int(v) for v in values]
        window = as_2d(rhs_shape[d] for d in dn.rhs_spec[2:])
        strides, dilation = as_2d(params["window_strides"]), as_2d(params["rhs_dilation"])
        padding_low = as_2d((lo for lo, _ in params["padding"]), fill=0)
        out_size = as_2d(out_shape[d] for d in dn.out_spec[2:])

        geometry = dict(window=window, strides=strides, dilation=dilation, padding_low=padding_low,
                        out_size=out_size)

        def conv_in_kernel(weights, x, col_scale, bias, out_scale, x_scale=None):
            """Channels-last input (1-D as height 1), patches gathered by the kernel; a float
            x is quantized there too (per sample, or with ``x_scale``)."""
            x = xla_int8.to_channels_last(x, dn)
            if any(d != 1 for d in params["lhs_dilation"]):  # transposed conv: zeros between inputs
                x = jax.lax.pad(x, jnp.zeros((), x.dtype),
                                [(0, 0, 0), *[(0, 0, d - 1) for d in params["lhs_dilation"]], (0, 0, 0)])
            x = x.reshape(x.shape[0], *([1] * (2 - nsp)), *x.shape[1:])
            if x.dtype == jnp.float32:
                y = native.dynamic_conv(x, weights[packed], weights[colsum], n, col_scale, **geometry,
                                        x_scale=x_scale, **epilogue(bias, out_scale))
            else:
                y = native.quantized_conv(x, weights[packed], weights[colsum], n, col_scale, **geometry,
                                          **epilogue(bias, out_scale))
            return xla_int8.from_channels_last(y.reshape(x.shape[0], *[out_shape[d] for d in dn.out_spec[2:]], n), dn)

    if is_dynamic:
        if not is_conv:  # rows are quantized inside the kernel
            def run_dynamic_dot(weights, x, _wq, w_scale, bias=None):
                y = run_matmul(weights, x, weight_scale_columns(op, w_scale), bias, None)
                return (finish(y, bias, None),)
            return run_dynamic_dot

        def run_dynamic_conv(weights, x, _wq, w_scale, bias=None):  # quantized per sample in the kernel
            return (finish(conv_in_kernel(weights, x, weight_scale_columns(op, w_scale), bias, None), bias, None),)
        return run_dynamic_conv

    def run_static(weights, x, _wq, x_scale, w_scale, *rest):  # x: int8, or float to quantize
        bias = rest[0] if has_bias else None
        out_scale = rest[-1] if requantize else None
        xp = array_module(x_scale, w_scale)
        x_scale = xp.reshape(xp.asarray(x_scale), ())
        col_scale = x_scale * weight_scale_columns(op, w_scale)
        y = run_matmul(weights, x, col_scale, bias, out_scale, x_scale if x.dtype == jnp.float32 else None)
        return (finish(y, bias, out_scale),)
    return run_static


@register(quant.DynamicActDotOp, target=NATIVE_TARGETS)
def _act_dot(op: quant.DynamicActDotOp, ctx: LoweringContext):
    """``jquant.dynamic_act_dot`` as one native call on the [B, M, K] / [B, N, K] layout,
    each operand read in place where strides can express it (attention's q and k: no
    transposes), else transposed first."""
    sizes, out_shape, operands = act_dot_operands(op)

    def run(weights, x, y):
        x, y, strides = operands(x, y)
        return (native.dynamic_act_gemm(x, y, sizes=sizes, strides=strides).reshape(out_shape),)
    return run


@register(quant.CodeReduceWindowMaxOp, jlax.PRIMITIVE_OPS["reduce_window_max"], target=NATIVE_TARGETS)
def _max_pool(op: jlax.LaxOp | quant.CodeReduceWindowMaxOp, ctx: LoweringContext):
    """``reduce_window_max`` over the two middle axes of a 4-D array (a 2-D max-pool,
    channels last) as one native call where its input is int8 codes (NaN's code wins, as
    NaN does in the float kernel) or float32 from a native kernel, else None. Next to
    native kernels a custom call runs inline, where the XLA loop fusion would be handed to
    a pool thread; after XLA's own ops its pooling fuses with them and stays."""
    params = op.params()
    window, strides, padding = params["window_dimensions"], params["window_strides"], params["padding"]
    producer = op.operands[0].owner
    if not isinstance(op, quant.CodeReduceWindowMaxOp) and not (
            str(op.operands[0].type.get_element_type()) == "f32"
            and isinstance(producer, Operation) and ctx.kernel(producer).native):
        return None
    if len(window) != 4 \
            or any(d != 1 for d in (*params["base_dilation"], *params["window_dilation"])) \
            or window[0] != 1 or window[3] != 1 or strides[0] != 1 or strides[3] != 1 \
            or any(padding[d] != (0, 0) for d in (0, 3)) or any(lo < 0 or hi < 0 for lo, hi in padding):
        return None
    out_shape = tuple(op.results[0].type.get_shape())
    geometry = dict(window=window[1:3], strides=strides[1:3], padding_low=[padding[1][0], padding[2][0]],
                    out_size=out_shape[1:3])
    return lambda weights, x: (native.max_pool(x, **geometry),)


@register(*fused.ROW_OPS, target=NATIVE_TARGETS)
def _rows(op, ctx: LoweringContext):
    """``jfuse.layer_norm`` / ``jfuse.softmax`` on float32 as one native call over the rows
    of the last axis."""
    if str(op.input.type.get_element_type()) != "f32":
        return None
    shape = tuple(op.input.type.get_shape())
    rows = (int(np.prod(shape[:-1])), shape[-1])
    if isinstance(op, fused.SoftmaxOp):
        return lambda weights, x: (native.softmax(x.reshape(rows)).reshape(shape),)
    epsilon = op.epsilon
    return lambda weights, x, *values: (
        native.layer_norm(x.reshape(rows), *op.vectors(values), epsilon=epsilon).reshape(shape),)


@register(fused.FusedOp, jlax.PRIMITIVE_OPS["dot_general"], target=NATIVE_TARGETS)
def _float_dot(op, ctx: LoweringContext):
    """A float32 dot by a weight as one FloatGemm, bias and activation fused, the weight packed
    at load (float16 / bfloat16 / int8 weights upcast to float32 then): a batch-1 layer (at most
    ``FEW_ROWS`` rows, a weight of at most ``FEW_ROWS_MAX_WEIGHT`` floats) always; more rows
    where oneDNN has no brgemm kernel for the product (its generic ``gemm:jit`` sgemm, which
    AVX2 CPUs get) or is not here. Other products are oneDNN's. A dot of two activations is
    ``_float_act_dot``'s."""
    if op.PRIMITIVE != "dot_general" or any(str(v.type.get_element_type()) != "f32"
                                            for v in (op.operands[0], op.results[0])):
        return None
    source = weight_source(op, ctx, keep_bfloat16=False)  # a bfloat16 weight upcast: these are bound
    shape = gemm_shape(op)                                 # by oneDNN's call cost, not arithmetic
    if source is None and isinstance(op, jlax.LaxOp) and str(op.operands[1].type.get_element_type()) == "f32":
        return _float_act_dot(op)
    if source is None or shape is None:
        return None
    name, load, _ = source
    k, n = shape
    m, rows = dot_rows(op)
    if min(m, k, n) < 1 or (k * n > native.FEW_ROWS_MAX_WEIGHT if m <= native.FEW_ROWS
                            else onednn_brgemm_dense(m, k, n)):
        return None
    out_shape = tuple(op.results[0].type.get_shape())
    cols = column_axes(op)
    activation, bias, in_kernel = split_epilogue(op, out_shape, cols)
    packed = ctx.derive(f"{name}@float_gemm:{k}x{n}", 4 * k * (-(-n // 16) * 16),
                        lambda: native.float_gemm_pack(weight_2d(op, load())),
                        embeddable=4 * k * n <= EMBED_PACKED_MAX_BYTES)

    def run(weights, x, _w, b=None):
        column_bias = per_column(b, out_shape, cols) if b is not None and in_kernel else None
        y = native.float_gemm(rows(x), weights[packed], n, bias=column_bias,
                              activation=activation if in_kernel else "none").reshape(out_shape)
        return (y if in_kernel else fused.fused_epilogue(y, b, activation),)
    return Kernel(run, unread=frozenset({1}), native=True)


def _float_act_dot(op):
    """A float32 dot of two activations (attention's scores and weighted sum) as one
    FloatActGemm on the [B, M, K] x [B, N, K]^T layout, operands read in place where strides
    allow (``act_dot_operands``) -- where oneDNN has no brgemm kernel for the batch."""
    sizes, out_shape, operands = act_dot_operands(op)
    b, m, n, k = sizes
    if b * m * n * k < MIN_ACTIVATION_DOT_MACS or onednn_brgemm_batch(b, m, k, n):
        return None

    def run(weights, x, y):
        x, y, strides = operands(x, y)
        return (native.float_act_gemm(x, y, sizes=sizes, strides=strides).reshape(out_shape),)
    return Kernel(run, native=True)


def _onednn_brgemm(implementation) -> bool:
    """Whether oneDNN runs a float32 product on a brgemm kernel (AVX-512 and AMX CPUs), given
    the call that names its implementation; its generic sgemm (``gemm:jit``) measured at half
    FloatGemm's rate on an AVX2 CPU."""
    if onednn.unavailable() is not None:
        return False
    try:
        return implementation().startswith("brg")
    except onednn.OnednnRefused:
        return False


def onednn_brgemm_dense(m: int, k: int, n: int) -> bool:
    """``_onednn_brgemm`` of an [m, k] x [k, n] dense layer."""
    return _onednn_brgemm(lambda: onednn.matmul_info(m, k, n, False, "none")[0])


def onednn_brgemm_batch(b: int, m: int, k: int, n: int) -> bool:
    """``_onednn_brgemm`` of a batch of ``b`` [m, k] x [k, n] products."""
    return _onednn_brgemm(lambda: onednn.batch_matmul_info(b, m, k, n))
