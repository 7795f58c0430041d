"""The float32 GEMMs of the anchor models, one kernel beside the others, in one process:
jaxlite's FloatGemm, oneDNN's matmul (the implementation this CPU gets), XLA's dot and
numpy's BLAS, timed interleaved (medians), pinned to one core. GMAC/s per kernel, and the
cost per output element of each fused activation in FloatGemm (against none).

    python benchmarks/float_gemm.py [--reps 60]

The rule of ``cpu_kernels._float_dot`` follows from it: FloatGemm takes products of more
than four rows where oneDNN has no brgemm kernel (its generic ``gemm:jit`` sgemm).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import configure_threads, machine  # noqa: E402

THREADS = configure_threads(["--threads", "1"])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxlite.runtime import native_calls as native  # noqa: E402
from jaxlite.runtime import onednn_calls as onednn  # noqa: E402
from jaxlite.timing import interleaved_medians  # noqa: E402

# (M, K, N): the transformer's projections and MLP (seq 128, d 256), a ResNet-18 1x1
# convolution as a GEMM, a square one
SHAPES = [(128, 256, 256), (128, 256, 1024), (128, 1024, 256), (784, 128, 256), (512, 512, 512)]
ACTIVATIONS = ("relu", "gelu_tanh", "gelu_erf", "silu", "sigmoid", "tanh")


def main() -> None:
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 60
    print(machine(THREADS))
    if not native.available():
        sys.exit(f"jaxlite's native kernels are not available here: {native.unavailable()}")
    with_onednn = onednn.unavailable() is None
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k)).astype(np.float32)
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        aj, wj, packed = jnp.asarray(a), jnp.asarray(w), jnp.asarray(native.float_gemm_pack(w))
        fns = {"FloatGemm": jax.jit(lambda a, packed=packed, n=n: native.float_gemm(a, packed, n)),
               "XLA dot": jax.jit(lambda a, wj=wj: a @ wj),
               "numpy": lambda a, w=w: np.asarray(a) @ w}
        label = ""
        if with_onednn:
            label, _ = onednn.matmul_info(m, k, n, False, "none")
            onednn_packed = jnp.asarray(onednn.matmul_pack(w, m, False, "none"))
            fns[f"oneDNN {label}"] = jax.jit(lambda a, p=onednn_packed, n=n: onednn.matmul(a, p, n))
        times = interleaved_medians(fns, (aj,), reps=reps)
        rates = ", ".join(f"{name} {m * k * n / t / 1e9:.1f}" for name, t in times.items())
        print(f"{m}x{k}x{n}: GMAC/s {rates}")
    m, k, n = SHAPES[1]
    a = jnp.asarray(rng.standard_normal((m, k)).astype(np.float32))
    packed = jnp.asarray(native.float_gemm_pack((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)))
    fns = {act: jax.jit(lambda a, act=act: native.float_gemm(a, packed, n, activation=act))
           for act in ("none", *ACTIVATIONS)}
    times = interleaved_medians(fns, (a,), reps=reps)
    costs = ", ".join(f"{act} {(times[act] - times['none']) * 1e9 / (m * n):.2f}" for act in ACTIVATIONS)
    print(f"FloatGemm {m}x{k}x{n} epilogue, ns per output element over none: {costs}")


if __name__ == "__main__":
    main()
