"""Builds jaxlite's native CPU kernels (runtime/native/) when the package is built.

Everything else about the package is in pyproject.toml. Two shared libraries go next to
jaxlite/runtime/: ``_cpu_features`` (CPUID, built without ISA flags so it loads anywhere)
and ``_kernels_avx512vnni`` (the kernels, built for AVX-512 VNNI against jaxlib's XLA FFI
headers). The runtime loads the kernels only on a CPU that has those features, and needs no
compiler after installation. ``JAXLITE_BUILD_NATIVE=0`` installs without them (every op
then runs through XLA).
"""

import importlib.util
import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE = "runtime/native"
KERNEL_SOURCES = [f"{NATIVE}/{name}.cc" for name in ("gemm", "conv", "pool", "rows", "direct_run")]
ISA_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mfma"]


def _jaxlib_include() -> str:
    """jaxlib's bundled headers (xla/ffi/api/ffi.h): what jax.ffi.include_dir() returns."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("jaxlib is not installed in the build environment")
    return os.path.join(list(spec.submodule_search_locations)[0], "include")


class BuildNative(build_ext):
    """build_ext with jaxlib's headers found at build time and a clear message on failure."""

    def build_extensions(self):
        include = _jaxlib_include()
        for ext in self.extensions:  # a system include: its own warnings are not ours
            ext.extra_compile_args = ["-isystem", include, *ext.extra_compile_args]
        super().build_extensions()

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:
            sys.exit(f"\njaxlite: building the native CPU kernels ({ext.name}) failed: {e}\n"
                     "  They need a C++17 compiler that knows AVX-512 (g++ >= 9 or clang >= 10).\n"
                     "  To install without them (every op then runs through XLA), set JAXLITE_BUILD_NATIVE=0.\n")


def native_extensions() -> list[Extension]:
    if os.environ.get("JAXLITE_BUILD_NATIVE", "1") == "0":
        print("jaxlite: JAXLITE_BUILD_NATIVE=0: installing without the native CPU kernels", file=sys.stderr)
        return []
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        print(f"jaxlite: the native CPU kernels are for Linux on x86-64; this is {platform.system()} on "
              f"{platform.machine()}: installing without them", file=sys.stderr)
        return []
    return [
        Extension("jaxlite.runtime._cpu_features", [f"{NATIVE}/cpu_features.c"], extra_compile_args=["-O2"]),
        Extension("jaxlite.runtime._kernels_avx512vnni", KERNEL_SOURCES, language="c++",
                  depends=[f"{NATIVE}/{h}" for h in ("common.h", "vector_math.h", "gemm.h", "window.h", "bindings.h",
                                                      "exports.map")],
                  extra_compile_args=["-std=c++17", "-O3", *ISA_FLAGS, "-Wall", "-Wno-maybe-uninitialized",
                                      # only the extern "C" entry points are exported (JAXLITE_API)
                                      "-fvisibility=hidden", "-fvisibility-inlines-hidden"],
                  extra_link_args=[f"-Wl,--version-script={NATIVE}/exports.map"]),
    ]


setup(ext_modules=native_extensions(), cmdclass={"build_ext": BuildNative})
