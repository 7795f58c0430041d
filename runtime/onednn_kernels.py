"""The ``cpu-onednn`` target: dense layers and convolutions by a weight as oneDNN primitives
(runtime/onednn_calls.py), with the bias and the activation fused and the weight packed into
the primitive's layout once, when the model is placed.

The weight is any value known at load: a float32 weight, one stored in float16 / bfloat16
(``jquant.upcast``) or int8 (``jquant.dequantize``, the int8-weights mode) -- packed from its
float32 value, so those modes compute as float32 models do. A bfloat16 weight on a CPU with
bfloat16 arithmetic (AVX512-BF16, AMX-BF16) is computed in bfloat16 instead: the input is
rounded to bfloat16, products accumulate in float32 (the ``bfloat16`` mode).

A dot whose weight is one [K, N] matrix (``gemm_layout.gemm_shape``) is one matmul of the
input's rows; a 1-D or 2-D convolution runs channels-last (transposed convolutions on the
interior-padded input, as the int8 kernels do). A bias that varies along rows, and the
activation after it, stay in XLA. Shapes oneDNN serves only with its reference kernels
(``ref:...``, orders of magnitude slower) are left to XLA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxlite.dialects import fused, jlax
from jaxlite.runtime import cpu, xla_int8
from jaxlite.runtime import onednn_calls as onednn
from jaxlite.runtime.gemm_layout import (
    MIN_ACTIVATION_DOT_MACS,
    column_axes,
    dot_rows,
    gemm_shape,
    per_column,
    split_epilogue,
    weight_2d,
    weight_source,
)
from jaxlite.runtime.registry import Kernel, LoweringContext, register, register_target

CPU_ONEDNN = register_target(
    "cpu-onednn", "dense layers and convolutions on oneDNN in float32 (bfloat16 models: in bfloat16 where the "
                  "CPU has it), bias and activation fused, weights packed at load", onednn.unavailable)
# A packed weight is compiled into the program as a constant only while it is this small (as
# for the int8 kernels: XLA does nothing with a custom call's constant but keep it twice).
EMBED_PACKED_MAX_BYTES = 1024 * 1024


BFLOAT16_ISA = ("avx512_bf16", "amx_bf16")


def computes_bfloat16() -> bool:
    """Whether bfloat16 weights are computed in bfloat16 here (else upcast to float32)."""
    return any(f in cpu.features() for f in BFLOAT16_ISA)


@register(fused.FusedOp, jlax.PRIMITIVE_OPS["dot_general"], jlax.PRIMITIVE_OPS["conv_general_dilated"],
          target="cpu-onednn")
def _float_matmul(op, ctx: LoweringContext):
    if any(str(v.type.get_element_type()) != "f32" for v in (op.operands[0], op.results[0])):
        return None
    source = weight_source(op, ctx, computes_bfloat16())
    if source is None:
        plain_dot = isinstance(op, jlax.LaxOp) and op.PRIMITIVE == "dot_general"
        return _activation_dot(op) if plain_dot and str(op.operands[1].type.get_element_type()) == "f32" else None
    try:
        return (_dot if op.PRIMITIVE == "dot_general" else _conv)(op, ctx, *source)
    except onednn.OnednnRefused:
        return None



def _activation_dot(op):
    """A dot of two activations (attention's scores and weighted sum) as one batched oneDNN
    matmul: the operands transposed into [B, M, K] and [B, K, N] by XLA, the result back."""
    d = op.dot_dims()
    lhs, rhs = tuple(op.operands[0].type.get_shape()), tuple(op.operands[1].type.get_shape())

    def size(shape, axes):
        return int(np.prod([shape[a] for a in axes]))

    b, m, k, n = size(lhs, d.lhs_batch), size(lhs, d.lhs_free), size(lhs, d.lhs_contract), size(rhs, d.rhs_free)
    if b * m * k * n < MIN_ACTIVATION_DOT_MACS or onednn.batch_matmul_info(b, m, k, n).startswith("ref"):
        return None
    out_shape = tuple(op.results[0].type.get_shape())

    def run(weights, x, y):
        a = jnp.transpose(x, (*d.lhs_batch, *d.lhs_free, *d.lhs_contract)).reshape(b, m, k)
        w = jnp.transpose(y, (*d.rhs_batch, *d.rhs_contract, *d.rhs_free)).reshape(b, k, n)
        return (onednn.batch_matmul(a, w).reshape(out_shape),)
    return Kernel(run, native=True)


def _derive(ctx: LoweringContext, key: str, info, make) -> str | None:
    implementation, nbytes = info
    if implementation.startswith("ref"):
        return None
    return ctx.derive(key, nbytes, make, embeddable=nbytes <= EMBED_PACKED_MAX_BYTES)


def _dot(op, ctx: LoweringContext, name: str, load, dtype: str):
    shape = gemm_shape(op)
    if shape is None:
        return None
    k, n = shape
    out_shape = tuple(op.results[0].type.get_shape())
    cols = column_axes(op)
    activation, bias, in_kernel = split_epilogue(op, out_shape, cols)
    kernel_act, kernel_bias = (activation, bias is not None) if in_kernel else ("none", False)
    m, rows = dot_rows(op)
    packed = _derive(ctx, f"{name}@onednn:{m}x{k}x{n}:{int(kernel_bias)}:{kernel_act}:{dtype}",
                     onednn.matmul_info(m, k, n, kernel_bias, kernel_act, dtype),
                     lambda: onednn.matmul_pack(weight_2d(op, load()), m, kernel_bias, kernel_act, dtype))
    if packed is None:
        return None

    def run(weights, x, _w, b=None):
        column_bias = per_column(b, out_shape, cols) if b is not None and in_kernel else None
        y = onednn.matmul(rows(x), weights[packed], n, bias=column_bias, activation=kernel_act,
                          dtype=dtype)
        y = y.reshape(out_shape)
        return (y if in_kernel else fused.fused_epilogue(y, b, activation),)
    return Kernel(run, unread=frozenset({1}), native=True)


@dataclass(frozen=True)
class ConvLayout:
    """A 1-D or 2-D convolution as oneDNN's NHWC one: ``prepare`` turns the op's input into
    the kernel's -- ``spread`` (channels last, a transposed convolution's zeros inserted), then
    ``fit`` (rows the windows never reach cropped, padding as wide as a window added when
    ``pads``) --, ``finish`` the kernel's result back into the op's layout, ``oihw`` the op's
    weight into [O, C/G, KH, KW]."""

    in_shape: list[int]   # the kernel's input, NHWC
    geometry: list[int]   # O, KH, KW, strides, dilations, padding before, OH, OW, groups
    out_shape: tuple[int, ...]  # the kernel's result, NHWC
    pads: bool
    spread: Callable
    fit: Callable
    finish: Callable
    oihw: Callable

    def prepare(self, x):
        return self.fit(self.spread(x))


def conv_layout(op) -> ConvLayout | None:
    """``op``'s convolution as oneDNN runs it, or None where it cannot (3-D, batch groups,
    negative padding, windows that read only padding)."""
    params = op.params()
    dn = op.conv_dims()
    nsp = len(dn.lhs_spec) - 2
    if nsp not in (1, 2) or params["batch_group_count"] != 1:
        return None
    lhs_shape = tuple(op.operands[0].type.get_shape())
    w_shape = tuple(op.operands[1].type.get_shape())
    out_shape = tuple(op.results[0].type.get_shape())

    def as_2d(values, fill=1):  # a 1-D convolution runs as height 1
        return [fill] * (2 - nsp) + [int(v) for v in values]

    batch, channels = lhs_shape[dn.lhs_spec[0]], lhs_shape[dn.lhs_spec[1]]
    lhs_dilation = params["lhs_dilation"]
    size = [(s - 1) * d + 1 for s, d in zip((lhs_shape[d] for d in dn.lhs_spec[2:]), lhs_dilation, strict=True)]
    window = [w_shape[d] for d in dn.rhs_spec[2:]]
    out_size = [out_shape[d] for d in dn.out_spec[2:]]
    strides, rhs_dilation = params["window_strides"], params["rhs_dilation"]
    low = [lo for lo, _ in params["padding"]]
    if any(v < 0 for v in low):
        return None
    extent = [(k - 1) * d + 1 for k, d in zip(window, rhs_dilation, strict=True)]
    # input rows the windows reach; those past it are never read: cropped (oneDNN wants
    # padding >= 0), and the zeros beyond the input are the padding after it
    reach = [(o - 1) * s + e - lo for o, s, e, lo in zip(out_size, strides, extent, low, strict=True)]
    if any(r <= 0 for r in reach):  # the windows read only padding (degenerate): XLA's
        return None
    crop = [min(n, r) for n, r in zip(size, reach, strict=True)]
    high = [r - c for r, c in zip(reach, crop, strict=True)]
    # padding as wide as the window (whole windows of zeros) is added in XLA: oneDNN 3.2's
    # kernels crash on it
    pre_pad = any(p >= e for p, e in zip((*low, *high), extent * 2, strict=True))
    kernel_size = [lo + c + hi for lo, c, hi in zip(low, crop, high, strict=True)] if pre_pad else crop
    kernel_low = [0] * nsp if pre_pad else low
    o = w_shape[dn.rhs_spec[0]]
    in_shape = [batch, *as_2d(kernel_size), channels]
    geometry = [o, *as_2d(window), *as_2d(strides), *as_2d(rhs_dilation), *as_2d(kernel_low, fill=0),
                *as_2d(out_size), params["feature_group_count"]]

    def spread(x):
        x = xla_int8.to_channels_last(x, dn)
        if any(d != 1 for d in lhs_dilation):  # transposed conv: zeros between inputs
            x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *[(0, 0, d - 1) for d in lhs_dilation], (0, 0, 0)])
        return x

    def fit(x):
        if crop != size:
            x = x[(slice(None), *[slice(0, c) for c in crop])]
        if pre_pad:
            x = lax.pad(x, jnp.zeros((), x.dtype),
                        [(0, 0, 0), *[(lo, hi, 0) for lo, hi in zip(low, high, strict=True)], (0, 0, 0)])
        return x.reshape(in_shape)

    def finish(y):
        return xla_int8.from_channels_last(y.reshape(batch, *out_size, o), dn)

    def oihw(w):
        w = np.transpose(w, (dn.rhs_spec[0], dn.rhs_spec[1], *dn.rhs_spec[2:]))
        return w.reshape(w.shape[0], w.shape[1], *as_2d(w.shape[2:]))

    return ConvLayout(in_shape, geometry, (batch, *as_2d(out_size), o), pre_pad, spread, fit, finish, oihw)


def _conv(op, ctx: LoweringContext, name: str, load, dtype: str):
    layout = conv_layout(op)
    if layout is None:
        return None
    out_shape = tuple(op.results[0].type.get_shape())
    cols = (op.conv_dims().out_spec[1],)
    activation, bias, in_kernel = split_epilogue(op, out_shape, cols)
    kernel_act, kernel_bias = (activation, bias is not None) if in_kernel else ("none", False)
    in_shape, geometry = layout.in_shape, layout.geometry
    packed = _derive(ctx, f"{name}@onednn:{in_shape}:{geometry}:{int(kernel_bias)}:{kernel_act}:{dtype}",
                     onednn.conv_info(in_shape, geometry, kernel_bias, kernel_act, dtype),
                     lambda: onednn.conv_pack(layout.oihw(load()), in_shape, geometry, kernel_bias, kernel_act,
                                              dtype))
    if packed is None:
        return None

    def run(weights, x, _w, b=None):
        column_bias = per_column(b, out_shape, cols) if b is not None and in_kernel else None
        y = onednn.conv(layout.prepare(x), weights[packed], geometry, layout.out_shape, bias=column_bias,
                        activation=kernel_act, dtype=dtype)
        y = layout.finish(y)
        return (y if in_kernel else fused.fused_epilogue(y, b, activation),)
    return Kernel(run, unread=frozenset({1}), native=True)
