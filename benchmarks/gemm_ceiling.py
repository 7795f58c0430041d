"""The int8 GEMM against jax.jit's float32 dot on the benchmark transformer's GEMM shapes.

    python benchmarks/gemm_ceiling.py [--threads 1|all] [--reps 100]

A quantized model cannot beat jax.jit's float32 by more than its GEMMs do: this prints, per
shape, the native VNNI kernel (float rows quantized in the kernel: ``dynamic``; int8 rows:
``int8``) and XLA's float32 dot in GMAC/s, and their time ratio -- the floor of a model's
ratio if everything else were free. On the 4-layer transformer (d_model 256, seq 128) the
four shapes below are all of its weight GEMMs, weighted by their count per layer.
Defaults to one pinned core (the issue's LiteRT comparison is single-threaded).
"""

from __future__ import annotations

import sys

sys.path.insert(0, __import__("os").path.dirname(__file__))
from common import configure_threads, interleaved_medians, machine  # noqa: E402

if "--threads" not in sys.argv:
    sys.argv += ["--threads", "1"]
THREADS = configure_threads(sys.argv)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxlite.runtime import native_calls as native  # noqa: E402

# (M, K, N, activation, per layer): q/k/v/out projections, MLP in (GELU) and out
SHAPES = [(128, 256, 256, "none", 4), (128, 256, 1024, "gelu_tanh", 1), (128, 1024, 256, "none", 1)]


def main() -> None:
    if not native.available():
        sys.exit("the native kernels need AVX-512 VNNI and a C++ compiler")
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 100
    for block in (1, 5):
        print(machine(THREADS) + f"; medians of {reps} interleaved " +
              ("single calls" if block == 1 else "runs of 5 calls, the first of each dropped (warm)"))
        run(reps, block)


def run(reps: int, block: int) -> None:
    print(f"{'M x K x N':22s} {'f32 GMAC/s':>11s} {'dynamic':>9s} {'int8':>9s} {'dyn/f32':>8s} {'int8/f32':>9s}")
    rng = np.random.default_rng(0)
    total = {"f32": 0.0, "dynamic": 0.0, "int8": 0.0}
    for m, k, n, act, count in SHAPES:
        times = measure(m, k, n, act, rng, reps, block)
        for name in total:
            total[name] += count * times[name]
        gmac = m * k * n / 1e9
        print(f"{m}x{k}x{n} {act:9s} {gmac / times['f32']:11.1f} {gmac / times['dynamic']:9.1f} "
              f"{gmac / times['int8']:9.1f} {times['dynamic'] / times['f32']:8.3f} {times['int8'] / times['f32']:9.3f}")
    print(f"one transformer layer's weight GEMMs: dynamic/f32 {total['dynamic'] / total['f32']:.3f}, "
          f"int8/f32 {total['int8'] / total['f32']:.3f}")


def measure(m: int, k: int, n: int, act: str, rng, reps: int, block: int) -> dict[str, float]:
    """Median seconds of XLA's float32 dot (+ GELU) and the native dynamic / int8 GEMMs."""
    w = rng.standard_normal((k, n)).astype(np.float32)
    wq = np.clip(np.round(w / (np.abs(w).max(0) / 127)), -127, 127).astype(np.int8)
    packed, colsum = native.pack(wq)
    scale = jnp.full((n,), 0.01, jnp.float32)
    wj = jnp.asarray(w)
    x = jnp.asarray(rng.standard_normal((m, k)).astype(np.float32))
    xq = jnp.asarray(rng.integers(-127, 128, (m, k)).astype(np.int8))

    def f32(x, xq):
        y = x @ wj
        return jax.nn.gelu(y, approximate=True) if act == "gelu_tanh" else y

    fns = {"f32": jax.jit(f32),
           "dynamic": jax.jit(lambda x, xq: native.dynamic_gemm(x, packed, colsum, scale, n, activation=act)),
           "int8": jax.jit(lambda x, xq: native.quantized_gemm(xq, packed, colsum, n, scale, activation=act))}
    return interleaved_medians(fns, (x, xq), reps=reps, block=block)


if __name__ == "__main__":
    main()
