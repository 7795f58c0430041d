"""What this CPU is and can run: its model name and ISA features.

Features come from CPUID and XGETBV (``native/cpu_features.c``, built without ISA flags so
it runs anywhere), which also say whether the OS saves the wide registers. A kernel
library built for an ISA is loaded only where all of its features are present.
``JAXLITE_CPU_FEATURES`` may name a subset to use ("avx2,fma": pretend AVX-512 is absent),
to test the other kernel paths on a machine that has more.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
import platform
from pathlib import Path

# bit i of jaxlite_cpu_features() (native/cpu_features.c)
FEATURE_BITS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
_HERE = Path(__file__).parent


def extension_path(name: str) -> Path | None:
    """The built shared library ``name`` (an extension module built with the package, e.g.
    ``_kernels_avx512vnni``) next to this module, or None when it was not built."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = _HERE / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


@functools.cache
def detected_features() -> frozenset[str]:
    """The ISA features CPUID reports (empty where the probe library is missing)."""
    path = extension_path("_cpu_features")
    if path is None:
        return frozenset()
    probe = ctypes.CDLL(str(path)).jaxlite_cpu_features
    probe.restype = ctypes.c_uint64
    bits = probe()
    return frozenset(name for i, name in enumerate(FEATURE_BITS) if bits >> i & 1)


def features() -> frozenset[str]:
    """The features kernels may use: those detected, capped by ``JAXLITE_CPU_FEATURES``."""
    cap = os.environ.get("JAXLITE_CPU_FEATURES")
    found = detected_features()
    if cap is None:
        return found
    return found & {f.strip() for f in cap.split(",") if f.strip()}


@functools.cache
def model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """One line: the CPU model, its cores and the ISA features kernels may use."""
    used = features()
    capped = detected_features() - used
    text = f"{model_name()}, {os.cpu_count()} cores; features: {', '.join(sorted(used)) or 'none detected'}"
    return text + (f" (capped by JAXLITE_CPU_FEATURES: not using {', '.join(sorted(capped))})" if capped else "")
