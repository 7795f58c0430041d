"""Native int8 GEMM (AVX-512 VNNI) as an XLA custom call, compiled on first use.

The C++ source ships with the package (``native/int8_gemm.cc``); it is built with the
system's g++ against jaxlib's FFI headers into a cache folder (``$JAXLITE_CACHE`` or
``~/.cache/jaxlite``) and registered with ``jax.ffi``. Where there is no compiler, no
AVX-512 VNNI, or ``JAXLITE_NATIVE=0``, ``available()`` is False and the int8 kernels use
XLA's own int8 dot_general instead. The int8 GEMM is bit-identical either way; the fused
dynamic dot agrees to float rounding (XLA may fuse its rescale into multiply-adds) — tested.
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

TARGET = "jaxlite_int8_gemm"
DYNAMIC_TARGET = "jaxlite_dynamic_gemm"
_SOURCE = Path(__file__).parent / "native" / "int8_gemm.cc"


def _cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags and "avx512bw" in flags


@functools.cache
def available() -> bool:
    """Build (once, cached on disk) and register the kernel; False where it cannot run."""
    if os.environ.get("JAXLITE_NATIVE", "1") == "0" or sys.platform != "linux" or not _cpu_has_vnni():
        return False
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
            cmd = ["g++", "-O3", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-mfma", "-shared", "-fPIC",
                   "-std=c++17", "-w", f"-I{include}", str(_SOURCE), "-o", str(tmp)]
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
            os.replace(tmp, lib)
        handle = ctypes.cdll.LoadLibrary(str(lib))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handle.JaxliteInt8Gemm), platform="cpu")
        jax.ffi.register_ffi_target(DYNAMIC_TARGET, jax.ffi.pycapsule(handle.JaxliteDynamicGemm),
                                    platform="cpu")
        return True
    except Exception as e:  # no compiler, old headers, ...: XLA's int8 dot is the fallback
        print(f"jaxlite: native int8 GEMM unavailable ({type(e).__name__}: {str(e)[:200]}); "
              "using XLA's int8 dot_general", file=sys.stderr)
        return False


def pack(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(packed bytes, column sums) of an int8 [K, N] weight for ``gemm``."""
    k, n = w.shape
    k4, panels = (k + 3) // 4, (n + 31) // 32
    padded = np.zeros((k4 * 4, panels * 32), np.int8)
    padded[:k, :n] = w
    packed = padded.reshape(k4, 4, panels, 32).transpose(2, 0, 3, 1).reshape(-1)
    return np.ascontiguousarray(packed), w.astype(np.int32).sum(0).astype(np.int32)


def gemm(a, packed, colsum, n: int):
    """int32 [M, n] = int8 a [M, K] x the packed weight (inside jax.jit or eagerly)."""
    import jax
    import jax.numpy as jnp

    return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((a.shape[0], n), jnp.int32))(a, packed, colsum)


def dynamic_gemm(x, packed, colsum, w_scale, n: int):
    """float32 [M, n]: x [M, K] quantized per row on the fly, times the packed int8 weight,
    rescaled by the row and weight scales (one custom call for the whole dynamic dot)."""
    import jax
    import jax.numpy as jnp

    return jax.ffi.ffi_call(DYNAMIC_TARGET, jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32))(
        x, packed, colsum, w_scale)
