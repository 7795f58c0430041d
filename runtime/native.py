"""Native int8 kernels (AVX-512 VNNI) as XLA custom calls, compiled on first use.

The C++ source ships with the package (``native/int8_gemm.cc``); it is built with the
system's g++ against jaxlib's FFI headers into a cache folder (``$JAXLITE_CACHE`` or
``~/.cache/jaxlite``) and registered with ``jax.ffi``. Nine calls: the quantized GEMM
(int8 rows x packed weight, epilogue in registers), the dynamic GEMM (float rows
quantized in the kernel; or, for rows several dynamic dots read, quantized once by their
own call), the 2-D convolution (patches gathered in the kernel), the
dynamic convolution (float input quantized per sample while it is copied for the patches),
the product of two activations (both quantized, the right side packed per call), max
pooling (int8 or float32, channels last), and the float32 row ops ``jfuse.layer_norm`` and
``jfuse.softmax`` (one pass per row where XLA runs four fusions). Where there
is no compiler, no AVX-512 VNNI, or ``JAXLITE_NATIVE=0``, ``available()`` is False and the
same ops run through XLA's int8 dot_general. The int8 products are identical either way;
floats agree to rounding (the epilogue's order of operations is XLA's, but XLA may fuse
multiply-adds, and exp/tanh/erf are the kernel's own polynomials) -- tested.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

QUANTIZED_TARGET = "jaxlite_quantized_gemm"
DYNAMIC_TARGET = "jaxlite_dynamic_gemm"
CONV_TARGET = "jaxlite_quantized_conv"
DYNAMIC_CONV_TARGET = "jaxlite_dynamic_conv"
MAX_POOL_TARGET = "jaxlite_max_pool"
ACT_TARGET = "jaxlite_dynamic_act_gemm"
LAYER_NORM_TARGET = "jaxlite_layer_norm"
SOFTMAX_TARGET = "jaxlite_softmax"
QUANTIZE_ROWS_TARGET = "jaxlite_quantize_rows"
# activations the kernel's epilogue applies itself: those of dialects/fused.py (relu and
# relu6 exactly, the others to float32 rounding)
ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2, "sigmoid": 3, "tanh": 4, "silu": 5, "gelu_tanh": 6,
               "gelu_erf": 7}
_SOURCE = Path(__file__).parent / "native" / "int8_gemm.cc"


def _cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f in flags for f in ("avx512_vnni", "avx512bw", "avx512vl"))


@functools.cache
def library() -> ctypes.CDLL | None:
    """The kernels' shared library (built once, cached on disk), or None where it cannot run."""
    if os.environ.get("JAXLITE_NATIVE", "1") == "0" or sys.platform != "linux" or not _cpu_has_vnni():
        return None
    try:
        import jax

        include = jax.ffi.include_dir()
        source = _SOURCE.read_bytes()
        tag = hashlib.sha256(source + jax.__version__.encode()).hexdigest()[:16]
        cache = Path(os.environ.get("JAXLITE_CACHE", Path.home() / ".cache" / "jaxlite"))
        lib = cache / f"int8_gemm-{tag}.so"
        if not lib.exists():
            cache.mkdir(parents=True, exist_ok=True)
            tmp = lib.with_suffix(f".{os.getpid()}.tmp")
            cmd = ["g++", "-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mfma", "-shared", "-fPIC",
                   "-std=c++17", "-w", f"-I{include}", str(_SOURCE), "-o", str(tmp)]
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
            os.replace(tmp, lib)
        return ctypes.cdll.LoadLibrary(str(lib))
    except Exception as e:  # no compiler, old headers, ...: XLA's int8 dot is the fallback
        print(f"jaxlite: native int8 GEMM unavailable ({type(e).__name__}: {str(e)[:200]}); "
              "using XLA's int8 dot_general", file=sys.stderr)
        return None


# custom-call target -> the library's FFI handler symbol (its direct-call twin: JaxliteDirect...)
HANDLERS = {
    QUANTIZED_TARGET: "QuantizedGemm", DYNAMIC_TARGET: "DynamicGemm", CONV_TARGET: "QuantizedConv",
    DYNAMIC_CONV_TARGET: "DynamicConv", MAX_POOL_TARGET: "MaxPool", ACT_TARGET: "DynamicActGemm",
    LAYER_NORM_TARGET: "LayerNorm", SOFTMAX_TARGET: "Softmax", QUANTIZE_ROWS_TARGET: "QuantizeRows",
}


@functools.cache
def available() -> bool:
    """Build (once) and register the kernels with jax's FFI; False where they cannot run."""
    handle = library()
    if handle is None:
        return False
    import jax

    try:
        for target, name in HANDLERS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handle, f"Jaxlite{name}")),
                                        platform="cpu")
    except Exception as e:  # a jaxlib whose FFI refuses the handlers: XLA's int8 dot is the fallback
        print(f"jaxlite: native int8 kernels not registered ({type(e).__name__}: {str(e)[:200]}); "
              "using XLA's int8 dot_general", file=sys.stderr)
        return False
    return True


def pack(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(packed bytes, column sums) of an int8 [K, N] weight for ``gemm``."""
    return packed_weight(w), column_sums(w)


def packed_weight(w: np.ndarray) -> np.ndarray:
    """An int8 [K, N] weight in the kernel's layout: panels of 32 columns, k in groups of 4."""
    k, n = w.shape
    k4, panels = (k + 3) // 4, (n + 31) // 32
    padded = np.zeros((k4 * 4, panels * 32), np.int8)
    padded[:k, :n] = w
    return padded.reshape(k4, 4, panels, 32).transpose(2, 0, 3, 1).reshape(-1)  # one copy


def column_sums(w: np.ndarray) -> np.ndarray:
    """int32 column sums of an int8 [K, N] weight (the kernel's unsigned-A correction),
    accumulated in int32 without an int32 copy of the weight (4x its size at load)."""
    return np.sum(w, axis=0, dtype=np.int32)


# under jax.vmap each kernel runs once per batch element (they take fixed ranks)
_VMAP = "sequential"


def _optional(x):
    """An optional float32 operand: empty when absent; flattened on the host when its value
    is known while tracing (no XLA op per call)."""
    import jax
    import jax.numpy as jnp

    if x is None:
        return np.zeros((0,), np.float32)
    if isinstance(x, jax.core.Tracer):
        return jnp.reshape(x, (-1,)).astype(jnp.float32)
    return np.asarray(x, np.float32).reshape(-1)


def _window_attrs(**attrs) -> dict:
    """The int64 attributes of the window calls (window, strides, dilation, padding, size)."""
    return {name: np.asarray(value, np.int64) for name, value in attrs.items()}


def quantized_gemm(a, packed, colsum, n: int, col_scale, *, row_scale=None, bias=None,
                   out_scale=None, activation: str = "none"):
    """int8 a [M, K] x the packed weight with the epilogue in the kernel:
    ``activation((acc * row_scale[m]) * col_scale[n] + bias[n])`` as float32 [M, n], or
    requantized to int8 by ``out_scale`` (round half to even, clamped to +-127)."""
    import jax
    import jax.numpy as jnp

    out = jnp.int8 if out_scale is not None else jnp.float32
    return jax.ffi.ffi_call(QUANTIZED_TARGET, jax.ShapeDtypeStruct((a.shape[0], n), out), vmap_method=_VMAP)(
        a, packed, colsum, _optional(row_scale), _optional(col_scale), _optional(bias),
        _optional(out_scale), activation=np.int32(ACTIVATIONS[activation]))


def quantized_conv(x, packed, colsum, n: int, col_scale, *, window, strides, dilation, padding_low,
                   out_size, row_scale=None, bias=None, out_scale=None, activation: str = "none"):
    """2-D convolution of int8 x [N, H, W, C] by the packed im2col weight (``runtime.xla_int8.
    im2col_weight``), the patches gathered in the kernel: [N * OH * OW, n] with the epilogue
    of ``quantized_gemm``. ``padding_low``: zeros before each spatial dim (the high side
    follows from ``out_size``)."""
    import jax
    import jax.numpy as jnp

    rows = x.shape[0] * out_size[0] * out_size[1]
    out = jnp.int8 if out_scale is not None else jnp.float32
    return jax.ffi.ffi_call(CONV_TARGET, jax.ShapeDtypeStruct((rows, n), out), vmap_method=_VMAP)(
        x, packed, colsum, _optional(row_scale), _optional(col_scale), _optional(bias),
        _optional(out_scale), activation=np.int32(ACTIVATIONS[activation]),
        **_window_attrs(window=window, strides=strides, dilation=dilation, padding_low=padding_low,
                        out_size=out_size))


def dynamic_conv(x, packed, colsum, n: int, w_scale, *, window, strides, dilation, padding_low,
                 out_size, bias=None, out_scale=None, x_scale=None, activation: str = "none"):
    """``quantized_conv`` of a float32 x [N, H, W, C] quantized per sample in the kernel
    (scale = max|x[b]| / 127): rows of sample b get its scale in the epilogue. With
    ``x_scale`` (a calibrated scale) every sample uses it and the epilogue does not."""
    import jax
    import jax.numpy as jnp

    rows = x.shape[0] * out_size[0] * out_size[1]
    out = jnp.int8 if out_scale is not None else jnp.float32
    return jax.ffi.ffi_call(DYNAMIC_CONV_TARGET, jax.ShapeDtypeStruct((rows, n), out), vmap_method=_VMAP)(
        x, packed, colsum, _optional(w_scale), _optional(bias), _optional(out_scale), _optional(x_scale),
        activation=np.int32(ACTIVATIONS[activation]),
        **_window_attrs(window=window, strides=strides, dilation=dilation, padding_low=padding_low,
                        out_size=out_size))


def max_pool(x, *, window, strides, padding_low, out_size):
    """Max pooling of an int8 or float32 x [N, H, W, C] over the two middle axes (window
    positions outside x are skipped, as lax's lowest-value padding): [N, OH, OW, C]."""
    import jax

    shape = (x.shape[0], *out_size, x.shape[3])
    return jax.ffi.ffi_call(MAX_POOL_TARGET, jax.ShapeDtypeStruct(shape, x.dtype), vmap_method=_VMAP)(
        x, **_window_attrs(window=window, strides=strides, padding_low=padding_low, out_size=out_size))


def dynamic_gemm(x, packed, colsum, w_scale, n: int, *, bias=None, out_scale=None, x_scale=None,
                 activation: str = "none"):
    """float32 x [M, K] quantized per row on the fly, times the packed int8 weight, with the
    epilogue ``activation((acc * row_scale[m]) * w_scale[n] + bias[n])`` (one custom call for
    the whole dynamic dot). With ``x_scale`` (a calibrated scale) every row is quantized
    with it instead, and the epilogue has no row scale."""
    import jax
    import jax.numpy as jnp

    out = jnp.int8 if out_scale is not None else jnp.float32
    return jax.ffi.ffi_call(DYNAMIC_TARGET, jax.ShapeDtypeStruct((x.shape[0], n), out), vmap_method=_VMAP)(
        x, packed, colsum, _optional(w_scale), _optional(bias), _optional(out_scale), _optional(x_scale),
        activation=np.int32(ACTIVATIONS[activation]))


def quantize_rows(x):
    """(int8 [M, K], float32 scales [M]): float32 rows x [M, K] quantized as
    ``dynamic_gemm`` quantizes them (symmetric, one scale per row)."""
    import jax
    import jax.numpy as jnp

    m, k = x.shape
    return jax.ffi.ffi_call(QUANTIZE_ROWS_TARGET, (jax.ShapeDtypeStruct((m, k), jnp.int8),
                                                  jax.ShapeDtypeStruct((m,), jnp.float32)), vmap_method=_VMAP)(x)


def dynamic_act_gemm(a, b, *, sizes=None, strides=None):
    """float32 [B, M, N] = a [B, M, K] x b [B, N, K]^T with both sides' rows quantized on the
    fly (one scale per row of each), int8 products, rescaled (``jquant.dynamic_act_dot``).
    With ``sizes`` (B, M, N, K) and ``strides`` (a's batch and row stride, b's, in elements;
    K contiguous) a and b are read in place, whatever their shapes."""
    import jax
    import jax.numpy as jnp

    if sizes is None:
        sizes = (a.shape[0], a.shape[1], b.shape[1], a.shape[2])
        strides = (a.shape[1] * a.shape[2], a.shape[2], b.shape[1] * b.shape[2], b.shape[2])
    bsz, m, n, _ = sizes
    return jax.ffi.ffi_call(ACT_TARGET, jax.ShapeDtypeStruct((bsz, m, n), jnp.float32), vmap_method=_VMAP)(
        a, b, sizes=np.asarray(sizes, np.int64), strides=np.asarray(strides, np.int64))


def layer_norm(x, scale, bias, *, epsilon: float):
    """``jfuse.layer_norm`` of float32 rows x [R, N]; scale and bias hold N values, one
    value (every column) or none (absent)."""
    import jax

    return jax.ffi.ffi_call(LAYER_NORM_TARGET, jax.ShapeDtypeStruct(x.shape, x.dtype), vmap_method=_VMAP)(
        x, _optional(scale), _optional(bias), epsilon=np.float32(epsilon))


def softmax(x):
    """``jfuse.softmax`` of float32 rows x [R, N]."""
    import jax

    return jax.ffi.ffi_call(SOFTMAX_TARGET, jax.ShapeDtypeStruct(x.shape, x.dtype), vmap_method=_VMAP)(x)
