"""The native kernels of this checkout against another build of them, in one process.

    python benchmarks/native_ab.py OLD.so [--reps 400] [--only PREFIX]

This machine's speed swings 30-50% between processes, which hides kernel changes of a few
percent. So the other build (the ``runtime/_kernels_<isa>*.so`` of another checkout -- the ISA this CPU runs -- or an
``int8_gemm-*.so`` that jaxlite before the install-time build compiled into ~/.cache) is
loaded beside the current one under ``old_*`` FFI targets and the two are called alternately
on the same arrays: GEMMs of the benchmark models' shapes (transformer, ResNet/CNN convs as
GEMMs, the digits MLP), both float-input (dynamic) and int8-input, the attention dot, and
the float32 FloatGemm / FloatActGemm where the other build has them.
Prints min and 25th percentile per build and their ratio. Pinned to one core, inline dispatch.
The two builds must have the same FFI signatures (the Python wrappers are this checkout's;
each build's int8 weights are packed in the layout it reads, JaxliteWeightLayout);
``--only dynamic`` (rows whose label starts with it) compares the kernels that kept theirs.
The current build against itself reads 0.99-1.00 on every row here: that is the resolution.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager

os.environ.setdefault("JAX_CPU_ENABLE_ASYNC_DISPATCH", "false")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxlite.runtime import native_calls as native  # noqa: E402

KERNELS = ("QuantizedGemm", "DynamicGemm", "DynamicActGemm", "QuantizedConv", "DynamicConv", "FloatGemm",
           "FloatActGemm")
FLOAT_SHAPES = [(128, 256, 256), (128, 256, 1024), (128, 1024, 256), (784, 128, 256), (512, 512, 512)]
# (batch, height, width, in channels, out channels) of 3x3 SAME convolutions: the digits CNN's
CONVS = [(64, 8, 8, 1, 16), (64, 4, 4, 16, 32)]
SHAPES = [(128, 256, 256, "none"), (128, 256, 1024, "gelu_tanh"), (128, 1024, 256, "none"),
          (1024, 144, 32, "relu"), (4096, 9, 16, "relu"), (64, 64, 128, "relu"), (64, 64, 10, "none"),
          (1, 64, 256, "relu"), (1, 256, 256, "relu"), (4, 1024, 1024, "none")]  # batch 1-4 dense layers


@contextmanager
def old_targets():
    """While tracing: this checkout's kernel calls name the other build's FFI targets."""
    kernels = native.library().kernels
    saved = {name: kernels[name] for name in KERNELS if name in kernels}
    for name, kernel in saved.items():
        kernels[name] = dataclasses.replace(kernel, prefix="old_jaxlite_")
    try:
        yield
    finally:
        kernels.update(saved)


def compare(label: str, make, arg, reps: int, make_old=None) -> None:
    """make (and make_old for the other build, where its operands differ) timed on arg."""
    if "--only" in sys.argv and not label.startswith(sys.argv[sys.argv.index("--only") + 1]):
        return
    with old_targets():
        old = jax.jit(make_old or make).lower(arg).compile()  # traced while the old names are set
    new = jax.jit(make).lower(arg).compile()
    times = {"old": [], "new": []}
    for _ in range(reps):
        for name, fn in (("old", old), ("new", new)):
            t = time.perf_counter()
            jax.block_until_ready(fn(arg))
            times[name].append(time.perf_counter() - t)
    o, n = (np.sort(times[k]) * 1e6 for k in ("old", "new"))
    q = reps // 4
    print(f"{label:30s} old min {o[0]:8.1f} p25 {o[q]:8.1f} us | new min {n[0]:8.1f} p25 {n[q]:8.1f} us"
          f" | new/old {n[q] / o[q]:.3f}", flush=True)


def main() -> None:
    try:
        run()
    except jax.errors.JaxRuntimeError as e:  # e.g. "Wrong number of arguments"
        sys.exit(f"the other build does not take this checkout's FFI arguments: {str(e).splitlines()[0]}")


def run() -> None:
    if len(sys.argv) < 2 or not os.path.exists(sys.argv[1]):
        sys.exit(__doc__)
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 400
    if not native.available():
        sys.exit("the native kernels are not available on this machine")
    copy = os.path.join(tempfile.mkdtemp(), "old.so")  # a second copy loads as its own library
    shutil.copy(sys.argv[1], copy)
    lib = ctypes.CDLL(copy, mode=os.RTLD_LOCAL)
    in_both = [name for name in KERNELS if hasattr(lib, f"Jaxlite{name}")]  # older builds lack the float ones
    for name in in_both:
        jax.ffi.register_ffi_target("old_" + native.kernel(name).target, jax.ffi.pycapsule(getattr(lib, f"Jaxlite{name}")),
                                    platform="cpu")
    old_layout = native.weight_layout(lib)
    rng = np.random.default_rng(0)
    for m, k, n, act in SHAPES:
        w = rng.standard_normal((k, n)).astype(np.float32)
        wq = np.clip(np.round(w / (np.abs(w).max(0) / 127)), -127, 127).astype(np.int8)
        colsum = native.column_sums(wq)
        packs = native.packed_weight(wq), native.packed_weight(wq, old_layout)  # new build's, old build's
        scale = jnp.full((n,), 0.01, jnp.float32)
        x = jnp.asarray(rng.standard_normal((m, k)).astype(np.float32))
        dynamic = [lambda x, p=p, n=n, a=act, s=scale, c=colsum: native.dynamic_gemm(x, p, c, s, n, activation=a)
                   for p in packs]
        compare(f"dynamic {m}x{k}x{n} {act}", dynamic[0], x, reps, dynamic[1])
        xq = jnp.asarray(rng.integers(-127, 128, (m, k)).astype(np.int8))
        int8 = [lambda x, p=p, n=n, a=act, s=scale, c=colsum: native.quantized_gemm(
                    x, p, c, n, s, out_scale=jnp.float32(0.05), activation=a) for p in packs]
        compare(f"int8 {m}x{k}x{n} {act}", int8[0], xq, reps, int8[1])
    for b, h, w_, c, o in CONVS:
        wq = rng.integers(-127, 128, (9 * c, o)).astype(np.int8)
        colsum = native.column_sums(wq)
        packs = native.packed_weight(wq), native.packed_weight(wq, old_layout)
        scale = jnp.full((o,), 0.01, jnp.float32)
        geometry = dict(window=(3, 3), strides=(1, 1), dilation=(1, 1), padding_low=(1, 1), out_size=(h, w_))
        x = jnp.asarray(rng.standard_normal((b, h, w_, c)).astype(np.float32))
        dynamic = [lambda x, p=p, cs=colsum, s=scale, o=o, g=geometry: native.dynamic_conv(
                       x, p, cs, o, s, activation="relu", **g) for p in packs]
        compare(f"dynamic conv {b}x{h}x{w_}x{c}->{o} relu", dynamic[0], x, reps, dynamic[1])
        xq = jnp.asarray(rng.integers(-127, 128, (b, h, w_, c)).astype(np.int8))
        int8 = [lambda x, p=p, cs=colsum, s=scale, o=o, g=geometry: native.quantized_conv(
                    x, p, cs, o, s, out_scale=jnp.float32(0.05), activation="relu", **g) for p in packs]
        compare(f"int8 conv {b}x{h}x{w_}x{c}->{o} relu", int8[0], xq, reps, int8[1])
    heads = jnp.asarray(rng.standard_normal((4, 128, 64)).astype(np.float32))
    compare("act 4x128x64x128", lambda a: native.dynamic_act_gemm(a, a), heads, reps)
    if "FloatGemm" in in_both:
        for m, k, n in FLOAT_SHAPES:
            packed = jnp.asarray(native.float_gemm_pack(rng.standard_normal((k, n)).astype(np.float32)))
            x = jnp.asarray(rng.standard_normal((m, k)).astype(np.float32))
            compare(f"float {m}x{k}x{n} gelu_tanh",
                    lambda x, p=packed, n=n: native.float_gemm(x, p, n, activation="gelu_tanh"), x, reps)
    if "FloatActGemm" in in_both:
        compare("float act 4x128x64x128", lambda a: native.float_act_gemm(
            a, a, sizes=(4, 128, 128, 64), strides=(128 * 64, 64, 128 * 64, 64)), heads, reps)


if __name__ == "__main__":
    main()
