"""Builds jaxlite's native CPU kernels (runtime/native/) when the package is built.

Everything else about the package is in pyproject.toml. Five shared libraries go next to
jaxlite/runtime/: ``_cpu_features`` (CPUID, built without ISA flags so it loads anywhere),
``_direct_call`` (a CPython module: one call of a direct host plan without ctypes),
``_kernels_avx512vnni`` and ``_kernels_avx2`` (the int8 kernels, one build per ISA, against
jaxlib's XLA FFI headers) and ``_kernels_onednn`` (float kernels on oneDNN, and int8 ones for
CPUs with AMX, whose epilogue alone is compiled for AVX-512; built against the headers of
``onednn-devel-cpu-gomp`` and linked to the ``libdnnl`` of ``onednn-cpu-gomp``, which the
runtime loads from the installed package before this library: no rpath into the build
environment). The runtime loads each only where the CPU and the installation allow, and needs
no compiler after installation. ``JAXLITE_BUILD_NATIVE=0`` installs without them (every op
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
# one library per ISA, from the same sources (AVX2: native/avx512_on_avx2.h); the runtime
# loads the widest this CPU has (runtime/native_calls.py VARIANTS)
ISA_FLAGS = {"avx512vnni": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mfma"],
             "avx2": ["-mavx2", "-mfma"]}


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
        build_temp = self.build_temp
        self.build_temp = os.path.join(build_temp, ext.name)  # one object folder per library (same sources)
        try:
            super().build_extension(ext)
        except Exception as e:
            sys.exit(f"\njaxlite: building the native CPU kernels ({ext.name}) failed: {e}\n"
                     "  They need a C++17 compiler that knows AVX-512 (g++ >= 9 or clang >= 10).\n"
                     "  To install without them (every op then runs through XLA), set JAXLITE_BUILD_NATIVE=0.\n")
        finally:
            self.build_temp = build_temp


def _installed_file(distribution: str, name: str) -> str | None:
    """Where a file of an installed distribution lies (the build environment's copy)."""
    from importlib import metadata
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        return None
    found = next((f for f in files if f.name == name), None)
    return str(found.locate().resolve()) if found is not None else None


def onednn_extension() -> list[Extension]:
    header = _installed_file("onednn-devel-cpu-gomp", "dnnl.hpp")
    library = _installed_file("onednn-cpu-gomp", "libdnnl.so")
    if header is None or library is None:
        print("jaxlite: onednn-cpu-gomp / onednn-devel-cpu-gomp are not in the build environment: "
              "installing without the oneDNN kernels", file=sys.stderr)
        return []
    return [Extension("jaxlite.runtime._kernels_onednn", [f"{NATIVE}/onednn.cc", f"{NATIVE}/direct_run.cc"],
                      language="c++", depends=[f"{NATIVE}/{h}" for h in ("common.h", "bindings.h", "gemm.h", "vector_math.h",
                                                                             "exports.map")],
                      include_dirs=[os.path.dirname(header)], library_dirs=[os.path.dirname(library)],
                      libraries=["dnnl"],
                      extra_compile_args=["-std=c++17", "-O3", "-Wall", "-Wno-maybe-uninitialized",
                                          "-fvisibility=hidden", "-fvisibility-inlines-hidden"],
                      extra_link_args=[f"-Wl,--version-script={NATIVE}/exports.map"])]


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
        Extension("jaxlite.runtime._direct_call", [f"{NATIVE}/direct_call.c"], extra_compile_args=["-O2", "-Wall"]),
        *(Extension(f"jaxlite.runtime._kernels_{isa}", KERNEL_SOURCES, language="c++",
                    depends=[f"{NATIVE}/{h}" for h in ("common.h", "vector_math.h", "gemm.h", "window.h", "bindings.h",
                                                        "avx512_on_avx2.h", "exports.map")],
                    extra_compile_args=["-std=c++17", "-O3", *flags, "-Wall", "-Wno-maybe-uninitialized",
                                        # only the extern "C" entry points are exported (JAXLITE_API)
                                        "-fvisibility=hidden", "-fvisibility-inlines-hidden"],
                    extra_link_args=[f"-Wl,--version-script={NATIVE}/exports.map"])
          for isa, flags in ISA_FLAGS.items()),
        *onednn_extension(),
    ]


setup(ext_modules=native_extensions(), cmdclass={"build_ext": BuildNative})
