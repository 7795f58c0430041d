"""jaxlite's oneDNN kernels (``native/onednn.cc``, built with the package against the
``onednn-cpu-gomp`` wheel): the library, its kernels as jax custom calls, and the load-time
weight packing.

``libdnnl.so.3`` is the one the installed ``onednn-cpu-gomp`` distribution put in its
environment (``<prefix>/lib``); it is loaded here, before the extension that needs it, so no
rpath has to point into the build environment. oneDNN picks its own kernel for the CPU
(AMX, AVX-512, AVX2: ``implementation`` says which) and runs it on its OpenMP team
(``OMP_NUM_THREADS``; by default the CPUs this process may use).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from importlib import metadata
from pathlib import Path

import jax
import ml_dtypes
import numpy as np

from jaxlite.runtime import cpu
from jaxlite.runtime.native_calls import NativeLibrary, load_library

LIBRARY = "_kernels_onednn"
DISTRIBUTION = "onednn-cpu-gomp"
KERNELS = ("OnednnMatmul", "OnednnConv", "OnednnBatchMatmul", "OnednnInt8Matmul", "OnednnInt8Conv",
           "OnednnInt8ActMatmul")


def libdnnl_path() -> Path | None:
    """The installed oneDNN shared library, or None."""
    try:
        files = metadata.distribution(DISTRIBUTION).files or []
    except metadata.PackageNotFoundError:
        return None
    found = next((f for f in files if f.name == "libdnnl.so.3"), None)
    return Path(found.locate()).resolve() if found is not None else None


@functools.cache
def _load() -> NativeLibrary | str:
    if cpu.extension_path(LIBRARY) is None:
        return ("not built: install jaxlite from its source (pip install .) with onednn-cpu-gomp "
                "available, not with JAXLITE_BUILD_NATIVE=0")
    dnnl = libdnnl_path()
    if dnnl is None:
        return f"{DISTRIBUTION} is not installed (pip install {DISTRIBUTION}==2023.2.0)"
    try:
        ctypes.CDLL(str(dnnl), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        return f"{dnnl.name} did not load: {str(e)[:200]} (it needs the system's libgomp.so.1)"
    loaded = load_library(LIBRARY, KERNELS)
    if isinstance(loaded, NativeLibrary):
        h = loaded.handle
        for name in ("JaxliteOnednnMatmulInfo", "JaxliteOnednnMatmulPack", "JaxliteOnednnConvInfo",
                     "JaxliteOnednnConvPack", "JaxliteOnednnBatchMatmulInfo", "JaxliteOnednnInt8MatmulInfo",
                     "JaxliteOnednnInt8MatmulPack", "JaxliteOnednnInt8ConvInfo", "JaxliteOnednnInt8ConvPack",
                     "JaxliteOnednnInt8BatchMatmulInfo"):
            getattr(h, name).restype = ctypes.c_char_p
        i64, i32, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
        h.JaxliteOnednnMatmulInfo.argtypes = [i64, i64, i64, i32, i32, i32, ctypes.POINTER(i64)]
        h.JaxliteOnednnMatmulPack.argtypes = [i64, i64, i64, i32, i32, i32, ptr, ptr, i64]
        h.JaxliteOnednnConvInfo.argtypes = [ptr, ptr, i32, i32, i32, ctypes.POINTER(i64)]
        h.JaxliteOnednnConvPack.argtypes = [ptr, ptr, i32, i32, i32, ptr, ptr, i64]
        h.JaxliteOnednnBatchMatmulInfo.argtypes = [i64, i64, i64, i64, ctypes.POINTER(i64)]
        h.JaxliteOnednnInt8MatmulInfo.argtypes = [i64, i64, i64, i32, i32, i32, ctypes.POINTER(i64)]
        h.JaxliteOnednnInt8MatmulPack.argtypes = [i64, i64, i64, i32, i32, i32, ptr, ptr, i64]
        h.JaxliteOnednnInt8ConvInfo.argtypes = [ptr, ptr, i32, i32, i32, ctypes.POINTER(i64)]
        h.JaxliteOnednnInt8ConvPack.argtypes = [ptr, ptr, i32, i32, i32, ptr, ptr, i64]
        h.JaxliteOnednnInt8BatchMatmulInfo.argtypes = [i64, i64, i64, i64, ctypes.POINTER(i64)]
    return loaded


def unavailable() -> str | None:
    """None where the oneDNN kernels can run here, else why not (one line)."""
    if os.environ.get("JAXLITE_ONEDNN", "1") == "0":
        return "disabled by JAXLITE_ONEDNN=0"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"built for Linux on x86-64, this is {platform.system()} on {platform.machine()}"
    loaded = _load()
    return loaded if isinstance(loaded, str) else None


def library() -> NativeLibrary:
    why = unavailable()
    if why is not None:
        raise RuntimeError(f"jaxlite's oneDNN kernels are unavailable: {why}")
    return _load()


def activation_code(activation: str) -> int:
    return library().activations[activation]


class OnednnRefused(ValueError):
    """oneDNN has no kernel for this shape (the rule then leaves the op to XLA)."""


def _info(result: bytes, nbytes: ctypes.c_int64) -> tuple[str, int]:
    if nbytes.value < 0:
        raise OnednnRefused(result.decode())
    return result.decode(), nbytes.value


# the operand types the kernels compute in (the bias and the result are float32)
TYPES = {"float32": 0, "bfloat16": 1}


def _operand(w, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(w, np.float32 if dtype == "float32" else ml_dtypes.bfloat16)


def matmul_info(m: int, k: int, n: int, bias: bool, activation: str, dtype: str = "float32") -> tuple[str, int]:
    """(oneDNN's implementation, packed weight bytes) of ``[m, k] x [k, n]`` in ``dtype``."""
    nbytes = ctypes.c_int64()
    result = library().handle.JaxliteOnednnMatmulInfo(m, k, n, int(bias), activation_code(activation), TYPES[dtype],
                                                      ctypes.byref(nbytes))
    return _info(result, nbytes)


def matmul_pack(w: np.ndarray, m: int, bias: bool, activation: str, dtype: str = "float32") -> np.ndarray:
    """A [K, N] weight in the layout of the matmul with ``m`` rows (as int8 bytes)."""
    w = _operand(w, dtype)
    k, n = w.shape
    _, nbytes = matmul_info(m, k, n, bias, activation, dtype)
    out = np.empty(nbytes, np.int8)
    error = library().handle.JaxliteOnednnMatmulPack(m, k, n, int(bias), activation_code(activation), TYPES[dtype],
                                                     w.ctypes.data, out.ctypes.data, nbytes)
    if error is not None:
        raise RuntimeError(f"oneDNN weight packing: {error.decode()}")
    return out


def _ints(values) -> np.ndarray:
    return np.ascontiguousarray(values, np.int64)


def conv_info(in_shape, geometry, bias: bool, activation: str, dtype: str = "float32") -> tuple[str, int]:
    """(implementation, packed weight bytes) of a convolution of NHWC ``in_shape`` with
    ``geometry`` (O, KH, KW, strides, dilations, padding before, OH, OW, groups)."""
    shape, geo, nbytes = _ints(in_shape), _ints(geometry), ctypes.c_int64()
    result = library().handle.JaxliteOnednnConvInfo(shape.ctypes.data, geo.ctypes.data, int(bias),
                                                    activation_code(activation), TYPES[dtype], ctypes.byref(nbytes))
    return _info(result, nbytes)


def conv_pack(w: np.ndarray, in_shape, geometry, bias: bool, activation: str, dtype: str = "float32") -> np.ndarray:
    """A [O, C/G, KH, KW] weight in the convolution's layout (as int8 bytes)."""
    w = _operand(w, dtype)
    shape, geo = _ints(in_shape), _ints(geometry)
    _, nbytes = conv_info(in_shape, geometry, bias, activation, dtype)
    out = np.empty(nbytes, np.int8)
    error = library().handle.JaxliteOnednnConvPack(shape.ctypes.data, geo.ctypes.data, int(bias),
                                                   activation_code(activation), TYPES[dtype], w.ctypes.data,
                                                   out.ctypes.data, nbytes)
    if error is not None:
        raise RuntimeError(f"oneDNN weight packing: {error.decode()}")
    return out


def _bias(bias):
    return np.zeros((0,), np.float32) if bias is None else bias


def matmul(a, packed, n: int, *, bias=None, activation: str = "none", dtype: str = "float32"):
    """float32 ``activation(a [M, K] @ W + bias)`` [M, n], W packed by ``matmul_pack`` in
    ``dtype`` (bfloat16: a is rounded to bfloat16 in the kernel)."""
    return library().kernels["OnednnMatmul"](
        a, packed, _bias(bias), results=jax.ShapeDtypeStruct((a.shape[0], n), np.float32),
        activation=activation_code(activation), weights=np.int32(TYPES[dtype]))


def conv(x, packed, geometry, out_shape, *, bias=None, activation: str = "none", dtype: str = "float32"):
    """float32 NHWC convolution of x by the weight ``conv_pack`` made in ``dtype``, + bias,
    activation."""
    return library().kernels["OnednnConv"](
        x, packed, _bias(bias), results=jax.ShapeDtypeStruct(tuple(out_shape), np.float32),
        activation=activation_code(activation), sizes=list(geometry), weights=np.int32(TYPES[dtype]))


def batch_matmul_info(b: int, m: int, k: int, n: int) -> str:
    """oneDNN's implementation of ``[b, m, k] x [b, k, n]`` (or the error)."""
    nbytes = ctypes.c_int64()
    return _info(library().handle.JaxliteOnednnBatchMatmulInfo(b, m, k, n, ctypes.byref(nbytes)), nbytes)[0]


def batch_matmul(a, b):
    """float32 ``a [B, M, K] @ b [B, K, N]`` -> [B, M, N] (both operands activations)."""
    return library().kernels["OnednnBatchMatmul"](
        a, b, results=jax.ShapeDtypeStruct((a.shape[0], a.shape[1], b.shape[2]), np.float32))


# How an int8 primitive reads and writes (native/onednn.cc Int8Mode): int8 codes of one
# calibrated scale to float32 ("static") or to int8 ("requantize"), or codes quantized per
# row / sample with a scale and a zero point each ("dynamic", float32 out)
INT8_MODES = {"static": 0, "requantize": 1, "dynamic": 2}


def int8_matmul_info(m: int, k: int, n: int, bias: bool, activation: str, mode: str) -> tuple[str, int]:
    """(implementation, packed weight bytes) of the int8 ``[m, k] x [k, n]`` in ``mode``."""
    nbytes = ctypes.c_int64()
    result = library().handle.JaxliteOnednnInt8MatmulInfo(m, k, n, int(bias), activation_code(activation),
                                                          INT8_MODES[mode], ctypes.byref(nbytes))
    return _info(result, nbytes)


def int8_matmul_pack(w: np.ndarray, m: int, bias: bool, activation: str, mode: str) -> np.ndarray:
    """An int8 [K, N] weight in the layout of that matmul."""
    w = np.ascontiguousarray(w, np.int8)
    k, n = w.shape
    _, nbytes = int8_matmul_info(m, k, n, bias, activation, mode)
    out = np.empty(nbytes, np.int8)
    error = library().handle.JaxliteOnednnInt8MatmulPack(m, k, n, int(bias), activation_code(activation),
                                                         INT8_MODES[mode], w.ctypes.data, out.ctypes.data, nbytes)
    if error is not None:
        raise RuntimeError(f"oneDNN weight packing: {error.decode()}")
    return out


def int8_conv_info(in_shape, geometry, bias: bool, activation: str, mode: str) -> tuple[str, int]:
    """(implementation, packed weight bytes) of an int8 convolution (``conv_info``'s geometry)."""
    shape, geo, nbytes = _ints(in_shape), _ints(geometry), ctypes.c_int64()
    result = library().handle.JaxliteOnednnInt8ConvInfo(shape.ctypes.data, geo.ctypes.data, int(bias),
                                                        activation_code(activation), INT8_MODES[mode],
                                                        ctypes.byref(nbytes))
    return _info(result, nbytes)


def int8_conv_pack(w: np.ndarray, in_shape, geometry, bias: bool, activation: str, mode: str) -> np.ndarray:
    """An int8 [O, C/G, KH, KW] weight in that convolution's layout."""
    w = np.ascontiguousarray(w, np.int8)
    shape, geo = _ints(in_shape), _ints(geometry)
    _, nbytes = int8_conv_info(in_shape, geometry, bias, activation, mode)
    out = np.empty(nbytes, np.int8)
    error = library().handle.JaxliteOnednnInt8ConvPack(shape.ctypes.data, geo.ctypes.data, int(bias),
                                                       activation_code(activation), INT8_MODES[mode],
                                                       w.ctypes.data, out.ctypes.data, nbytes)
    if error is not None:
        raise RuntimeError(f"oneDNN weight packing: {error.decode()}")
    return out


def _int8_result(shape, out_scale):
    return jax.ShapeDtypeStruct(tuple(shape), np.int8 if out_scale is not None else np.float32)


def _vector(x, dtype=np.float32):
    """An optional operand as a flat vector (empty when absent)."""
    if x is None:
        return np.zeros((0,), dtype)
    if isinstance(x, jax.core.Tracer):
        return jax.numpy.reshape(x, (-1,)).astype(dtype)
    return np.asarray(x, dtype).reshape(-1)


def int8_matmul(a, packed, n: int, col_scale, *, colsum=None, row_scale=None, row_zero=None, bias=None,
                out_scale=None, x_scale=None, activation: str = "none"):
    """int8 codes ``a [M, K]`` (or float32 ``a`` quantized in the kernel with the calibrated
    ``x_scale``) x the packed weight: ``activation(acc * col_scale + bias)`` float32, or
    requantized to int8 by ``out_scale``; with ``row_scale`` / ``row_zero`` / ``colsum``
    (dynamic rows) ``activation((acc - row_zero * colsum) * row_scale * col_scale + bias)``."""
    return library().kernels["OnednnInt8Matmul"](
        a, packed, _vector(colsum, np.int32), _vector(row_scale), _vector(row_zero, np.int32), _vector(col_scale),
        _vector(bias), _vector(out_scale), _vector(x_scale), results=_int8_result((a.shape[0], n), out_scale),
        activation=activation_code(activation))


def int8_conv(x, packed, geometry, out_shape, col_scale, *, colsum=None, sample_scale=None, sample_zero=None,
              bias=None, out_scale=None, activation: str = "none"):
    """int8 NHWC convolution of codes ``x`` by the packed weight: ``activation(acc *
    col_scale + bias)`` float32 or requantized by ``out_scale``; with ``sample_scale`` /
    ``sample_zero`` (one per sample, dynamic) and ``colsum`` (the weight's sums per output
    channel) the codes are asymmetric."""
    return library().kernels["OnednnInt8Conv"](
        x, packed, _vector(colsum, np.int32), _vector(sample_scale), _vector(sample_zero, np.int32),
        _vector(col_scale), _vector(bias),
        _vector(out_scale), results=_int8_result(out_shape, out_scale), activation=activation_code(activation),
        sizes=list(geometry))


def kernel_paths(dtype: str = "float32") -> str:
    """The implementations oneDNN picks on this CPU for a typical dense layer and 3x3
    convolution in ``dtype`` (e.g. ``brg:avx512_core``), or why there are none."""
    why = unavailable()
    if why is not None:
        return f"none ({why})"
    dense, _ = matmul_info(128, 256, 256, True, "relu", dtype)
    convolution, _ = conv_info([1, 56, 56, 64], [64, 3, 3, 1, 1, 1, 1, 1, 1, 56, 56, 1], True, "relu", dtype)
    return f"dense {dense}, convolution {convolution}"


def int8_batch_matmul_info(b: int, m: int, k: int, n: int) -> str:
    """oneDNN's implementation of the int8 ``[b, m, k] x [b, k, n]`` of two activations."""
    nbytes = ctypes.c_int64()
    return _info(library().handle.JaxliteOnednnInt8BatchMatmulInfo(b, m, k, n, ctypes.byref(nbytes)), nbytes)[0]


def int8_act_matmul(a, b, *, sizes, strides):
    """float32 [B, M, N] = a [B, M, K] x b [B, N, K]^T, both sides' rows quantized on the fly
    (``native_calls.dynamic_act_gemm``'s semantics), read through ``sizes`` (B, M, N, K) and
    ``strides`` (a's batch and row stride, b's)."""
    bsz, m, n, _ = sizes
    return library().kernels["OnednnInt8ActMatmul"](
        a, b, results=jax.ShapeDtypeStruct((bsz, m, n), np.float32), sizes=list(sizes), strides=list(strides))


def int8_kernel_paths() -> str:
    """The implementations oneDNN picks here for a typical ``dynamic`` dense layer and a
    calibrated 3x3 convolution in int8 (e.g. ``brg:avx512_core_amx``), or why there are none."""
    why = unavailable()
    if why is not None:
        return f"none ({why})"
    dense, _ = int8_matmul_info(128, 256, 256, True, "relu", "dynamic")
    convolution, _ = int8_conv_info([1, 56, 56, 64], [64, 3, 3, 1, 1, 1, 1, 1, 1, 56, 56, 1], True, "relu",
                                    "requantize")
    return f"dense {dense}, convolution {convolution}"
