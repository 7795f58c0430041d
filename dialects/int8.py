"""The int8 scheme every quantized op follows: symmetric, zero point 0, q in [-127, 127].

Weights: scale = max|w| / 127 (per output channel or per tensor), q = clip(round(w / scale)),
computed once at conversion (numpy). Activations at run time: q = clip(round(x * (1 / scale)))
-- a multiply by the float32 reciprocal, not a division: the native kernels compute exactly
this, so both runtime paths agree bit for bit (a division may land one step apart where
x / scale is within an ulp of a rounding boundary). The activation formulas take numpy or
jax arrays alike (jax.numpy accepts both), so the passes, the runtime and the report share them.

Not a number: the symmetric range leaves code -128 unused, so it stands for a non-finite
value (NaN or +-Inf). Quantizing one gives -128, dequantizing -128 gives NaN, and every int8
op keeps it: a matmul row that reads one is not a number, max pooling lets it win. A scale
measured on the fly over values that include a non-finite one is NaN. So a quantized model
turns NaN/Inf inputs into NaN outputs, where the float model has NaN/Inf, instead of
plausible numbers.

Dynamic-range activations (``jquant.dynamic_dot`` / ``dynamic_conv``: quantized per row or
per sample at run time) use an asymmetric variant instead, as XNNPACK's dynamically
quantized ops do: the row's range [min(x, 0), max(x, 0)] is spread over all 256 codes with a
zero point, so a post-ReLU row (all >= 0) gets twice the resolution of max-abs / 127. Its
non-finite rows are marked by a NaN scale alone (every code is a value there).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

QMAX = 127
NAN_CODE = -128


def expand_shape(ndim: int, axis: int) -> tuple[int, ...]:
    """The shape that makes a per-channel scale vector broadcast along ``axis`` of an ndim
    array (``()``: a per-tensor scale, axis -1)."""
    if axis < 0:
        return ()
    return tuple(-1 if d == axis else 1 for d in range(ndim))


def expand(scale, ndim: int, axis: int):
    """A per-channel scale vector shaped to broadcast along ``axis`` of an ndim array."""
    return jnp.reshape(scale, expand_shape(ndim, axis))


def quantize(x, scale):
    """Activations: round_half_even(x * (1 / scale)) clamped to +-127, as int8; NAN_CODE
    where x is not finite. (Under a NaN scale -- a dynamic row holding a non-finite value --
    the codes are meaningless: the NaN scale makes the row's result NaN.)"""
    inv = 1.0 / jnp.asarray(scale, jnp.float32)
    return jnp.where(jnp.isfinite(x), jnp.clip(jnp.round(x * inv), -QMAX, QMAX), NAN_CODE).astype(jnp.int8)


def dequantize(q, scale, axis: int):
    """float32 ``q * scale``, the scale per channel along ``axis`` (-1: per tensor), NaN for
    NAN_CODE; numpy in, numpy out (a weight expanded at load), jax in, jax out."""
    xp = np if isinstance(q, np.ndarray) and isinstance(scale, np.ndarray) else jnp
    value = q.astype(np.float32) * xp.reshape(scale, expand_shape(q.ndim, axis))
    return xp.where(q == NAN_CODE, np.float32(np.nan), value) if q.dtype == np.int8 else value


def safe_scale(max_abs):
    """max|x| / 127, with 1 where the block is all zeros (q = 0 either way), NaN where it
    holds a non-finite value (max |x| is then Inf or NaN)."""
    return jnp.where(jnp.isfinite(max_abs), jnp.where(max_abs > 0, max_abs / QMAX, 1.0), jnp.nan).astype(jnp.float32)


# 2 / 255 as a float32 constant: both paths multiply by it (XLA turns a division by a
# constant into such a multiply anyway, so a division would round differently per path)
TWO_OVER_255 = np.float32(2) / np.float32(255)


def asymmetric_params(lo, hi):
    """(scale, zero point) of a dynamically quantized row whose range is [lo, hi] (lo =
    min(min x, 0), hi = max(max x, 0), keepdims): scale = (hi * 0.5 - lo * 0.5) * (2 / 255)
    (halved first, exactly, so no finite range overflows; no step a fused multiply-add could
    round differently), 1 for an all-zero row, NaN for a row holding NaN or Inf; zero =
    clip(round_half_even(-lo * (1 / scale)), 0, 255) - 128 as int32, 0 where the scale is
    NaN. The native kernels compute exactly these float operations."""
    raw = ((hi * np.float32(0.5) - lo * np.float32(0.5)) * TWO_OVER_255).astype(jnp.float32)
    finite = jnp.isfinite(raw)
    scale = jnp.where(finite, jnp.where(raw > 0, raw, 1.0), jnp.nan).astype(jnp.float32)
    zero = jnp.clip(jnp.round(-lo * (1.0 / scale)), 0, 255) - 128
    return scale, jnp.where(finite, zero, 0).astype(jnp.int32)


def row_params(x, axes):
    """``asymmetric_params`` of x's values over ``axes`` (kept as size-1 dims)."""
    lo = jnp.minimum(jnp.min(x, axis=axes, keepdims=True), 0.0)
    hi = jnp.maximum(jnp.max(x, axis=axes, keepdims=True), 0.0)
    return asymmetric_params(lo, hi)


def quantize_asymmetric(x, scale, zero):
    """clip(round_half_even(x * (1 / scale)) + zero, -128, 127) as int8: x ~ (q - zero) * scale,
    and x = 0 gives exactly the zero point (padding stays zero)."""
    inv = 1.0 / jnp.asarray(scale, jnp.float32)
    q = jnp.round(jnp.clip(x * inv, -256.0, 256.0)) + zero.astype(jnp.float32)
    return jnp.clip(q, -128, 127).astype(jnp.int8)


def ordered(q):
    """int8 codes -> uint8 in which NAN_CODE is the largest ((q + 127) mod 256), so that a
    max over them lets a non-finite value win, as a float max does with NaN."""
    return lax.bitcast_convert_type(q, jnp.uint8) + jnp.uint8(QMAX)


def from_ordered(u):
    """The inverse of ``ordered``."""
    return lax.bitcast_convert_type(u - jnp.uint8(QMAX), jnp.int8)


def activation_scale(max_abs: float) -> float:
    """The calibrated scale of an activation whose range is ``max_abs``."""
    return float(max_abs) / QMAX if max_abs > 0 else 1.0


def quantize_weight(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric max-abs int8 of a weight, per channel along ``axis`` (None: per tensor)."""
    w = np.asarray(w, np.float32)
    if axis is None:
        m = np.max(np.abs(w)).reshape(())
        scale = np.where(m > 0, m / QMAX, 1.0).astype(np.float32)
        q = np.clip(np.round(w / scale), -QMAX, QMAX).astype(np.int8)
        return q, scale.reshape(())
    others = tuple(i for i in range(w.ndim) if i != axis)
    m = np.max(np.abs(w), axis=others) if others else np.abs(w)
    scale = np.where(m > 0, m / QMAX, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale.reshape(expand_shape(w.ndim, axis))), -QMAX, QMAX).astype(np.int8)
    return q, scale
