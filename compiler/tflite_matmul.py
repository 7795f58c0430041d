"""Dots and convolutions in the .tflite export, in the three arithmetics of jaxlite's modes:
float (float32 weights, or float16 / int8 ones behind DEQUANTIZE), dynamic range (int8
weights with per-channel scales and float activations: TFLite's hybrid kernels, as jaxlite's
``dynamic`` mode computes) and int8 (int8 input, weights and output with scale and zero point
0, int32 bias at s_in * s_w: jaxlite's calibrated ``qdot``/``qconv``).

A dot by a weight without batch axes is FULLY_CONNECTED (weight [N, K]), a 1-D/2-D
convolution CONV_2D (OHWI) or DEPTHWISE_CONV_2D ([1, H, W, C*M]), with the bias and a
ReLU/ReLU6 fused; any other dot_general is BATCH_MATMUL. Activations jax allows in any
layout reach TFLite's (NHWC, contraction last) through TRANSPOSE and RESHAPE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tflite
from xdsl.ir import Operation, SSAValue

from jaxlite.compiler.tflite_ops import PADDING, Exporter, Val, handles, padding_mode
from jaxlite.compiler.tflite_writer import Quantization
from jaxlite.dialects import int8
from jaxlite.dialects.types import shape_dtype
from jaxlite.errors import ExportError

_FUSABLE = {"none": tflite.ActivationFunctionType.NONE, "relu": tflite.ActivationFunctionType.RELU,
            "relu6": tflite.ActivationFunctionType.RELU6}
_INT32 = np.iinfo(np.int32)
# dynamic-range layers with smaller kernels run in float (TFLiteConverter's threshold too)
HYBRID_MIN_ELEMENTS = 1024


@dataclass
class Kernel:
    """A dot/conv weight as stored: float32, float16, or int8 ``codes`` with ``scale`` along
    ``axis`` of the IR's kernel (-1: one scale)."""

    array: np.ndarray
    scale: np.ndarray | None = None
    axis: int = -1

    def laid_out(self, perm, shape, out_axis_of) -> tuple[np.ndarray, np.ndarray | None]:
        """The array transposed by ``perm`` and reshaped to ``shape``, and its scales as one
        per index of the output-channel axis there (``out_axis_of(axis)`` says how the scale's
        axis maps: the scale vector of that channel axis, or None if it cannot)."""
        array = np.ascontiguousarray(np.transpose(self.array, perm).reshape(shape))
        if self.scale is None:
            return array, None
        if self.axis < 0:
            return array, np.asarray(self.scale, np.float32).reshape(-1)[:1]
        scale = out_axis_of(self.axis, np.asarray(self.scale, np.float32).reshape(-1))
        if scale is None:
            raise _NotPerChannel()
        return array, scale


    def dequantized(self) -> np.ndarray:
        if self.scale is None:
            return self.array.astype(np.float32)
        return int8.dequantize(self.array, np.asarray(self.scale, np.float32).reshape(-1), self.axis)


class _NotPerChannel(Exception):
    """The weight's scales run along an axis that is not the layer's output channels."""


def _kernel(ex: Exporter, v: SSAValue, scale_v: SSAValue | None = None, axis: int = -1) -> Kernel | None:
    val = ex.vals[v]
    if val.const is None:
        return None
    array = np.broadcast_to(val.const, val.full_shape)
    if scale_v is not None:
        scale = ex.full_const(scale_v)
        if scale is None:
            return None
        return Kernel(array, scale, axis)
    return Kernel(array, val.scale, val.scale_axis)


def _kernel_tensor(ex: Exporter, array: np.ndarray, scale: np.ndarray | None, axis: int, hint: str,
                   quantized: bool) -> int:
    """The kernel as TFLite reads it: int8 with scales (``quantized``), else float32 (float16
    and int8 weights behind DEQUANTIZE)."""
    if scale is not None:
        q = ex.g.constant(array.astype(np.int8), ex.name(hint), Quantization.symmetric(scale, axis))
        if quantized:
            return q
        return ex.emit("DEQUANTIZE", [q], array.shape, np.float32, hint=hint + "_float")
    if array.dtype == np.float16:
        half = ex.g.constant(array, ex.name(hint + "_f16"))
        return ex.emit("DEQUANTIZE", [half], array.shape, np.float32, hint=hint)
    return ex.g.constant(array.astype(np.float32), ex.name(hint))


def _channel_bias(ex: Exporter, bias_v: SSAValue | None, out_shape, channel_axes) -> np.ndarray | None | bool:
    """The bias as one value per output channel (the product of ``channel_axes``), None when
    there is none, False when it is not a constant varying only along those axes."""
    if bias_v is None:
        return None
    b = ex.full_const(bias_v)
    if b is None:
        return False
    b = np.broadcast_to(b, out_shape)
    index = tuple(slice(None) if d in channel_axes else slice(0, 1) for d in range(len(out_shape)))
    picked = b[index]
    if not np.array_equal(np.broadcast_to(picked, out_shape), b):
        return False
    perm = [d for d in range(len(out_shape)) if d not in channel_axes] + list(channel_axes)
    return np.ascontiguousarray(np.transpose(picked, perm).reshape(-1)).astype(np.float32)


@dataclass
class _Epilogue:
    """What follows the product: bias, activation, and the arithmetic of the layer."""

    bias_v: SSAValue | None
    activation: str
    mode: str  # "float", "hybrid" (dynamic range) or "int8"
    x_scale: float | None = None   # int8: the input's scale
    out_scale: float | None = None  # int8 with an int8 result: the output's scale


def _prepared_input(ex: Exporter, lhs_v: SSAValue, ep: _Epilogue, quantized_kernel: bool) -> tuple[int, str]:
    """The layer's input tensor and the arithmetic it can run in: int8 layers take int8 (a
    float input is QUANTIZE'd with the calibrated scale); a float-result int8 layer runs as
    dynamic range on the dequantized input."""
    t = ex.full(lhs_v)
    mode = ep.mode
    if mode == "hybrid" and not quantized_kernel:
        mode = "float"
    if mode == "int8" and (ep.out_scale is None or ep.activation not in _FUSABLE or not quantized_kernel):
        mode = "hybrid" if quantized_kernel else "float"
    if mode == "int8":
        if ex.g.dtype(t) != np.int8:
            t = ex.emit("QUANTIZE", [t], ex.shape_of(t), np.int8, quant=Quantization.symmetric([ep.x_scale]),
                        hint="quantized_input")
        else:
            _check_scale(ex.g.quantization(t), ep.x_scale)
            ep.x_scale = ex.g.quantization(t).scale[0]  # the tensor's own (after a ReLU: finer, see _out_quant)
    elif ex.g.dtype(t) == np.int8:
        _check_scale(ex.g.quantization(t), ep.x_scale if ep.x_scale is not None else _code_scale(ex.g.quantization(t)))
        t = ex.emit("DEQUANTIZE", [t], ex.shape_of(t), np.float32, hint="dequantized_input")
    return t, mode


def _code_scale(q: Quantization | None) -> float:
    if q is None:
        raise ExportError("an int8 tensor lost its quantization parameters on the way to a layer")
    return q.scale[0] * (127 - q.zero_point[0]) / 127


def _check_scale(q: Quantization | None, scale: float) -> None:
    """An int8 tensor holds jaxlite's codes of ``scale``: the same largest value, 127 * scale
    (its zero point may be -128 after a ReLU, see _out_quant)."""
    ok = q is not None and len(q.scale) == 1 and np.isclose(q.scale[0] * (127 - q.zero_point[0]), 127 * scale,
                                                           rtol=1e-5)
    if not ok:
        raise ExportError(f"int8 tensor quantized as {q}, where jaxlite's codes have scale {scale}")


def _finish(ex: Exporter, t: int, op: Operation, ep: _Epilogue, mode: str, fused_bias: bool,
            fused_activation: bool, out_shape) -> None:
    """Bias and activation not fused, the int8 result of a layer that ran in float, the IR's shape."""
    dtype = ex.g.dtype(t)
    if not fused_bias and ep.bias_v is not None:
        b = ex.operand(ep.bias_v)
        t = ex.emit("ADD", [ex.reshape(t, out_shape), b], out_shape, dtype, ("AddOptions", {}))
    if not fused_activation:
        t = ex.activation(t, ep.activation)
    t = ex.reshape(t, out_shape)
    result_dtype = shape_dtype(op.results[0].type)[1]
    if result_dtype == np.int8 and mode != "int8":
        t = ex.emit("QUANTIZE", [t], out_shape, np.int8, quant=Quantization.symmetric([ep.out_scale]))
    ex.set_tensor(op.results[0], t)


def _fused_activation(ep: _Epilogue) -> tuple[int, bool]:
    if ep.activation in _FUSABLE:
        return _FUSABLE[ep.activation], True
    return _FUSABLE["none"], False


def _int32_bias(bias: np.ndarray, x_scale: float, w_scale: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    scale = (np.float64(x_scale) * np.broadcast_to(w_scale.astype(np.float64), (n,))).astype(np.float32)
    q = np.clip(np.round(bias.astype(np.float64) / scale.astype(np.float64)), _INT32.min, _INT32.max)
    return q.astype(np.int32), scale


def _bias_tensor(ex: Exporter, bias, mode: str, ep: _Epilogue, w_scale, n: int, required: bool = False) -> int:
    """The fused bias tensor; -1 (none) for an absent or all-zero bias (an untrained Dense)
    unless the op ``required`` one (LiteRT's convolutions)."""
    if bias is None or not np.any(bias):
        if not required:
            return -1
        bias = np.zeros(n, np.float32)
    if mode == "int8":
        q, scale = _int32_bias(bias, ep.x_scale, w_scale, n)
        return ex.g.constant(q, ex.name("bias"), Quantization.symmetric(scale))
    return ex.g.constant(bias, ex.name("bias"))


def _out_quant(mode: str, ep: _Epilogue) -> Quantization | None:
    """The int8 result's quantization: jaxlite's codes (scale s, zero point 0); after a ReLU,
    whose codes are >= 0, the same range [0, 127 s] on all 256 levels (scale 127 s / 255, zero
    point -128): twice the resolution, as TFLite's own int8 models quantize ReLU outputs."""
    if mode != "int8":
        return None
    if ep.activation in ("relu", "relu6"):
        return Quantization((float(np.float32(ep.out_scale * 127 / 255)),), (-128,))
    return Quantization.symmetric([ep.out_scale])


# ---- dot_general --------------------------------------------------------------------------------


def _float_where_hybrid_loses(kernel: Kernel | None, ep: _Epilogue, depthwise: bool = False) -> Kernel | None:
    """A dynamic-range layer whose kernel is small (under HYBRID_MIN_ELEMENTS) or depthwise
    runs in float with the dequantized kernel, as TFLiteConverter leaves such layers: XNNPACK
    has no dynamic-range depthwise kernel, and on a small kernel quantizing the input costs
    more than it saves (the digits CNN's first layer: 63 vs 52 us)."""
    if ep.mode != "hybrid" or kernel is None or kernel.scale is None:
        return kernel
    if depthwise or kernel.array.size < HYBRID_MIN_ELEMENTS:
        ep.mode = "float"
        return Kernel(kernel.dequantized())
    return kernel


def lower_dot(ex: Exporter, op: Operation, lhs_v: SSAValue, kernel: Kernel | None, ep: _Epilogue,
              rhs_v: SSAValue | None = None) -> None:
    kernel = _float_where_hybrid_loses(kernel, ep)
    dims = op.dot_dims()
    out_shape = tuple(shape_dtype(op.results[0].type)[0])
    if kernel is not None and not dims.has_batch:
        try:
            _fully_connected(ex, op, lhs_v, kernel, ep, dims, out_shape)
            return
        except _NotPerChannel:
            pass
    _batch_matmul(ex, op, lhs_v, rhs_v, kernel, ep, dims, out_shape)


def _fully_connected(ex, op, lhs_v, kernel: Kernel, ep: _Epilogue, dims, out_shape) -> None:
    lhs_shape = shape_dtype(lhs_v.type)[0]
    free_sizes = [lhs_shape[d] for d in dims.lhs_free]
    k = math.prod(lhs_shape[d] for d in dims.lhs_contract)
    rhs_free_sizes = [kernel.array.shape[d] for d in dims.rhs_free]
    n = math.prod(rhs_free_sizes)

    def scale_of(axis, scale):
        if axis not in dims.rhs_free:
            return None
        sizes = [kernel.array.shape[d] for d in dims.rhs_free]
        expanded = [1] * len(sizes)
        expanded[dims.rhs_free.index(axis)] = scale.size
        return np.broadcast_to(scale.reshape(expanded), sizes).reshape(-1)

    # [K..., N...] -> [K, N] -> [N, K]
    kn, w_scale = kernel.laid_out((*dims.rhs_contract, *dims.rhs_free), (k, n), scale_of)
    weight = np.ascontiguousarray(kn.T)
    quantized = w_scale is not None
    x, mode = _prepared_input(ex, lhs_v, ep, quantized)
    x = ex.transpose(x, (*dims.lhs_free, *dims.lhs_contract))
    keep_dims = len(free_sizes) >= 2
    x = ex.reshape(x, (*free_sizes, k) if keep_dims else (math.prod(free_sizes), k))
    w = _kernel_tensor(ex, weight, w_scale, 0, "weight", quantized=mode != "float")
    out_axes = tuple(range(len(dims.lhs_free), len(out_shape)))
    bias = _channel_bias(ex, ep.bias_v, out_shape, out_axes)
    fused_bias = bias is not False
    b = _bias_tensor(ex, bias if fused_bias else None, mode, ep, w_scale, n)
    act, fused_act = _fused_activation(ep) if fused_bias else (_FUSABLE["none"], False)
    if not fused_bias and mode == "int8":
        raise ExportError(f"cannot export {op.name}: an int8 layer's bias must be a constant per output channel")
    fc_shape = (*free_sizes, n) if keep_dims else (math.prod(free_sizes), n)
    out_dtype = np.int8 if mode == "int8" else np.float32
    t = ex.emit("FULLY_CONNECTED", [x, w, b], fc_shape, out_dtype,
                ("FullyConnectedOptions", {"fused_activation_function": act, "keep_num_dims": keep_dims}),
                quant=_out_quant(mode, ep), hint="fully_connected")
    _finish(ex, t, op, ep, mode, fused_bias, fused_act, out_shape)


def _batch_matmul(ex, op, lhs_v, rhs_v, kernel: Kernel | None, ep: _Epilogue, dims, out_shape) -> None:
    """Any dot_general: [B..., M, K] x [B..., K, N] (a side already [.., K, M] / [.., N, K]
    read transposed by adj_x / adj_y instead of moved)."""
    lhs = ex.full(lhs_v)
    if ex.g.dtype(lhs) == np.int8:
        lhs = ex.emit("DEQUANTIZE", [lhs], ex.shape_of(lhs), np.float32, hint="dequantized_input")
    if kernel is not None:
        rhs = _kernel_tensor(ex, kernel.array, None if kernel.scale is None else
                             np.asarray(kernel.scale, np.float32).reshape(-1), max(kernel.axis, 0), "weight",
                             quantized=False)
    else:
        rhs = ex.full(rhs_v)
    l_shape, r_shape = ex.shape_of(lhs), ex.shape_of(rhs)
    batch = [l_shape[d] for d in dims.lhs_batch]
    m = math.prod(l_shape[d] for d in dims.lhs_free)
    k = math.prod(l_shape[d] for d in dims.lhs_contract)
    n = math.prod(r_shape[d] for d in dims.rhs_free)
    plain_l = (*dims.lhs_batch, *dims.lhs_free, *dims.lhs_contract)
    adj_l = (*dims.lhs_batch, *dims.lhs_contract, *dims.lhs_free)
    adj_x = plain_l != tuple(range(len(l_shape))) and adj_l == tuple(range(len(l_shape)))
    plain_r = (*dims.rhs_batch, *dims.rhs_contract, *dims.rhs_free)
    adj_r = (*dims.rhs_batch, *dims.rhs_free, *dims.rhs_contract)
    adj_y = plain_r != tuple(range(len(r_shape))) and adj_r == tuple(range(len(r_shape)))
    if len(batch) > 3:
        batch = [math.prod(batch)]
    lhs = ex.reshape(ex.transpose(lhs, adj_l if adj_x else plain_l), (*batch, k, m) if adj_x else (*batch, m, k))
    rhs = ex.reshape(ex.transpose(rhs, adj_r if adj_y else plain_r), (*batch, n, k) if adj_y else (*batch, k, n))
    t = ex.emit("BATCH_MATMUL", [lhs, rhs], (*batch, m, n), np.float32,
                ("BatchMatMulOptions", {"adjX": adj_x, "adjY": adj_y}))
    mode = "float"
    _finish(ex, t, op, ep, mode, False, False, out_shape)


# ---- conv_general_dilated -----------------------------------------------------------------------


def lower_conv(ex: Exporter, op: Operation, lhs_v: SSAValue, kernel: Kernel | None, ep: _Epilogue) -> None:
    p = op.params()
    dn = op.conv_dims()
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    nsp = len(lhs_spec) - 2
    out_shape = tuple(shape_dtype(op.results[0].type)[0])
    if kernel is None:
        raise ExportError(f"cannot export {op.name} with a computed (non-constant) kernel to TFLite")
    if nsp not in (1, 2) or any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise ExportError(f"cannot export {op.name} to TFLite: only 1-D/2-D convolutions without input "
                          "dilation (transposed convolutions) or batch groups have TFLite builtins")
    lhs_shape = shape_dtype(lhs_v.type)[0]
    groups = p["feature_group_count"]
    c_in = lhs_shape[lhs_spec[1]]
    o = kernel.array.shape[rhs_spec[0]]
    # one group per input channel; a single input channel too (as TFLiteConverter writes it:
    # XNNPACK's depthwise kernel beats a convolution with K = kh * kw)
    depthwise = groups == c_in and kernel.array.shape[rhs_spec[1]] == 1
    if groups > 1 and not depthwise:
        raise ExportError(f"cannot export {op.name} with {groups} feature groups to TFLite (only "
                          "depthwise convolutions, one group per input channel)")
    kernel = _float_where_hybrid_loses(kernel, ep, depthwise)
    spatial_in = [lhs_shape[d] for d in lhs_spec[2:]]
    window = [kernel.array.shape[d] for d in rhs_spec[2:]]
    strides, dilation, padding = list(p["window_strides"]), list(p["rhs_dilation"]), [tuple(x) for x in p["padding"]]
    if nsp == 1:  # a 1-D convolution as 2-D over [N, 1, W, C]
        spatial_in, window, strides, dilation, padding = ([1, *spatial_in], [1, *window], [1, *strides],
                                                          [1, *dilation], [(0, 0), *padding])

    # OHWI for CONV_2D, [1, H, W, O] for DEPTHWISE_CONV_2D; scales along O
    perm = (rhs_spec[0], *rhs_spec[2:], rhs_spec[1])
    ohwi_shape = (o, *window, kernel.array.shape[rhs_spec[1]])

    def scale_of(axis, scale):
        return scale if axis == rhs_spec[0] else None

    try:
        weight, w_scale = kernel.laid_out(perm, ohwi_shape, scale_of)
    except _NotPerChannel:
        weight, w_scale = np.transpose(kernel.dequantized(), perm).reshape(ohwi_shape), None
    if depthwise:
        weight = np.ascontiguousarray(np.transpose(weight, (3, 1, 2, 0)))
    quantized = w_scale is not None
    x, mode = _prepared_input(ex, lhs_v, ep, quantized)
    x = ex.transpose(x, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))
    n_batch = lhs_shape[lhs_spec[0]]
    x = ex.reshape(x, (n_batch, *spatial_in, c_in))
    mode_pad = padding_mode(spatial_in, window, strides, padding, dilation)
    if mode_pad is None:
        if any(lo < 0 or hi < 0 for lo, hi in padding):
            raise ExportError(f"cannot export {op.name} with negative padding {padding} to TFLite")
        padded = (n_batch, *(s + lo + hi for s, (lo, hi) in zip(spatial_in, padding, strict=True)), c_in)
        pads = ex.int_const([[0, 0], *map(list, padding), [0, 0]], "paddings")
        q = ex.g.quantization(x)
        # the code of 0.0 (an int8 tensor's zero point), quantized as the tensor is (LiteRT checks)
        zero = np.full((), q.zero_point[0] if q is not None else 0, ex.g.dtype(x))
        x = ex.emit("PADV2", [x, pads, ex.g.constant(zero, ex.name("pad_value"), q)], padded, ex.g.dtype(x), quant=q)
        mode_pad = "VALID"
    w = _kernel_tensor(ex, weight, w_scale, 3 if depthwise else 0, "filter", quantized=mode != "float")
    out_spatial = [out_shape[d] for d in out_spec[2:]]
    if nsp == 1:
        out_spatial = [1, *out_spatial]
    nhwc_shape = (n_batch, *out_spatial, o)
    bias = _channel_bias(ex, ep.bias_v, out_shape, (out_spec[1],))
    fused_bias = bias is not False
    if not fused_bias and mode == "int8":
        raise ExportError(f"cannot export {op.name}: an int8 layer's bias must be a constant per output channel")
    b = _bias_tensor(ex, bias if fused_bias else None, mode, ep, w_scale, o, required=True)
    act, fused_act = _fused_activation(ep) if fused_bias else (_FUSABLE["none"], False)
    options = {"padding": PADDING[mode_pad], "stride_h": strides[0], "stride_w": strides[1],
               "dilation_h_factor": dilation[0], "dilation_w_factor": dilation[1],
               "fused_activation_function": act}
    out_dtype = np.int8 if mode == "int8" else np.float32
    if depthwise:
        options["depth_multiplier"] = o // c_in
        t = ex.emit("DEPTHWISE_CONV_2D", [x, w, b], nhwc_shape, out_dtype, ("DepthwiseConv2DOptions", options),
                    quant=_out_quant(mode, ep))
    else:
        t = ex.emit("CONV_2D", [x, w, b], nhwc_shape, out_dtype, ("Conv2DOptions", options),
                    quant=_out_quant(mode, ep))
    # NHWC -> the IR's layout
    t = ex.reshape(t, (n_batch, *out_spatial[-nsp:], o))
    to_out = [0] * (nsp + 2)
    to_out[out_spec[0]] = 0
    for j, d in enumerate(out_spec[2:]):
        to_out[d] = 1 + j
    to_out[out_spec[1]] = nsp + 1
    if not fused_bias:  # bias (not per channel) added in the IR's layout
        t = ex.transpose(t, to_out)
        _finish(ex, t, op, ep, mode, False, fused_act, out_shape)
        return
    if not fused_act:
        t = ex.activation(t, ep.activation)
    t = ex.transpose(t, to_out)
    if shape_dtype(op.results[0].type)[1] == np.int8 and mode != "int8":
        t = ex.emit("QUANTIZE", [t], out_shape, np.int8, quant=Quantization.symmetric([ep.out_scale]))
    ex.set_tensor(op.results[0], t)


# ---- handlers -------------------------------------------------------------------------------------


def _scalar(ex: Exporter, v: SSAValue | None) -> float | None:
    if v is None:
        return None
    c = ex.full_const(v)
    if c is None or c.size != 1:
        raise ExportError("cannot export an int8 layer whose scale is computed at run time")
    return float(c.reshape(-1)[0])


def _is_dot(op: Operation) -> bool:
    return op.PRIMITIVE == "dot_general"


@handles("jfuse.dot", "jfuse.conv", "jlax.dot_general", "jlax.conv_general_dilated")
def _float_matmul(ex: Exporter, op: Operation) -> None:
    lhs, rhs = op.operands[0], op.operands[1]
    if any(shape_dtype(v.type)[1].kind != "f" for v in (lhs, rhs)):
        raise ExportError(f"cannot export an integer {op.name} to TFLite (its FULLY_CONNECTED, "
                          "BATCH_MATMUL and CONV_2D take float or quantized int8 operands)")
    bias = getattr(op, "bias", None)
    activation = getattr(op, "activation", "none")
    ep = _Epilogue(bias, activation, "float")
    kernel = _kernel(ex, rhs)
    if _is_dot(op):  # (a constant on the left, W @ x, is BATCH_MATMUL's tensor operand)
        lower_dot(ex, op, lhs, kernel, ep, rhs)
    else:
        lower_conv(ex, op, lhs, kernel, ep)


@handles("jquant.dynamic_dot", "jquant.dynamic_conv")
def _dynamic_matmul(ex: Exporter, op: Operation) -> None:
    kernel = _kernel(ex, op.rhs, op.w_scale, op.w_axis)
    ep = _Epilogue(op.bias, op.activation, "hybrid")
    (lower_dot if _is_dot(op) else lower_conv)(ex, op, op.lhs, kernel, ep)


@handles("jquant.qdot", "jquant.qconv")
def _int8_matmul(ex: Exporter, op: Operation) -> None:
    kernel = _kernel(ex, op.rhs, op.w_scale, op.w_axis)
    ep = _Epilogue(op.bias, op.activation, "int8", _scalar(ex, op.x_scale), _scalar(ex, op.out_scale))
    (lower_dot if _is_dot(op) else lower_conv)(ex, op, op.lhs, kernel, ep)


@handles("jquant.dynamic_act_dot")
def _act_dot(ex: Exporter, op: Operation) -> None:
    # as TFLite's dynamic-range models leave it: a float BATCH_MATMUL of the two activations
    lower_dot(ex, op, op.lhs, None, _Epilogue(None, "none", "float"), op.rhs)


@handles("jquant.upcast")
def _upcast(ex: Exporter, op: Operation) -> None:
    val = ex.vals[op.input]
    shape = tuple(shape_dtype(op.result.type)[0])
    if val.const is not None:
        stored = val.const if val.const.dtype == np.float16 else val.const.astype(np.float32)  # bfloat16: float32
        ex.vals[op.result] = Val(shape, np.dtype(np.float32), const=stored)
        return
    t = ex.full(op.input)
    ex.set_tensor(op.result, ex.emit("DEQUANTIZE" if ex.g.dtype(t) == np.float16 else "CAST", [t], shape,
                                     np.float32))


@handles("jquant.dequantize")
def _dequantize(ex: Exporter, op: Operation) -> None:
    val = ex.vals[op.input]
    scale = ex.full_const(op.scale)
    shape = tuple(shape_dtype(op.result.type)[0])
    if scale is None:
        raise ExportError("cannot export jquant.dequantize with a scale computed at run time")
    if val.const is not None and val.scale is None and val.const.dtype == np.int8:
        ex.vals[op.result] = Val(shape, np.dtype(np.float32), const=np.broadcast_to(val.const, val.full_shape),
                                 scale=scale, scale_axis=op.axis)
        return
    t = ex.full(op.input)
    if ex.g.dtype(t) != np.int8:
        raise ExportError(f"cannot export jquant.dequantize of {ex.g.dtype(t)} to TFLite")
    if op.axis >= 0:
        raise ExportError("cannot export a per-channel jquant.dequantize of an activation to TFLite")
    _check_scale(ex.g.quantization(t), float(scale.reshape(-1)[0]))
    ex.set_tensor(op.result, ex.emit("DEQUANTIZE", [t], shape, np.float32))


@handles("jquant.quantize")
def _quantize(ex: Exporter, op: Operation) -> None:
    scale = ex.full_const(op.scale)
    if scale is None or scale.size != 1:
        raise ExportError("cannot export jquant.quantize with per-channel or computed scales to TFLite")
    shape = tuple(shape_dtype(op.result.type)[0])
    t = ex.emit("QUANTIZE", [ex.full(op.input)], shape, np.int8, quant=Quantization.symmetric(scale))
    ex.set_tensor(op.result, t)


@handles("jquant.max")
def _code_max(ex: Exporter, op: Operation) -> None:
    a, b = ex.same_quantization([ex.full(v) for v in op.operands])
    q = ex.g.quantization(a)
    shape = tuple(shape_dtype(op.results[0].type)[0])
    ex.set_tensor(op.results[0], ex.emit("MAXIMUM", [a, b], shape, np.int8, quant=q))
