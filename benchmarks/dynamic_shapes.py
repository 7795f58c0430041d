"""Dynamic shapes: what a new shape costs, and what a call at a cached shape costs.

    python benchmarks/dynamic_shapes.py [--threads 1|all] [--reps 200] [--only MLP,CNN]

For each anchor model (anchor_models.py; the transformer with symbolic batch *and* sequence
length) in float32 and ``dynamic`` mode: the static model converted at batch 1, and the
same model converted with a symbolic batch. Prints

* the static model's ``compile()`` + first call, against the symbolic model's first call at
  batch 1 (specialize the IR, verify, lower, pack, XLA compile) and at a second new shape
  (batch 8; the weights are already placed and packed);
* the cached-call ratio: median of interleaved calls, symbolic model / static model at the
  same shape (1.0 = no cost for being dynamic).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import configure_threads, interleaved_medians, machine  # noqa: E402

THREADS = configure_threads(sys.argv)


def _arg(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from anchor_models import make_cnn, make_mlp, make_resnet18, make_transformer
    from jax import export

    import jaxlite

    reps = int(_arg("--reps", "200"))
    only = set(_arg("--only", "MLP,CNN,transformer,ResNet-18").split(","))
    print(machine(THREADS))
    models = {"MLP": make_mlp, "CNN": make_cnn, "transformer": make_transformer, "ResNet-18": make_resnet18}
    rng = np.random.default_rng(0)
    for name, make in models.items():
        if name not in only:
            continue
        fn, (x,) = make()
        x = np.asarray(x)
        if name == "transformer":  # batch and sequence length
            spec = jax.ShapeDtypeStruct(export.symbolic_shape(f"b, t, {x.shape[2]}"), jnp.float32)
            second = rng.standard_normal((2, 64, x.shape[2])).astype(np.float32)
        else:
            spec = None
            second = rng.standard_normal((8, *x.shape[1:])).astype(np.float32)
        for mode in ("float32", "dynamic"):
            quantize = None if mode == "float32" else mode
            static_model = jaxlite.convert(fn, x, quantize=quantize)
            symbolic_model = (jaxlite.convert(fn, spec, quantize=quantize) if spec is not None
                              else jaxlite.convert(fn, x, quantize=quantize, dynamic_batch=True))
            t0 = time.perf_counter()
            static = static_model.compile()
            np.asarray(static(x))
            t1 = time.perf_counter()
            symbolic = symbolic_model.compile()
            np.asarray(symbolic(x))
            t2 = time.perf_counter()
            np.asarray(symbolic(second))
            t3 = time.perf_counter()
            assert np.allclose(np.asarray(symbolic(x)), np.asarray(static(x)), rtol=1e-5, atol=1e-5)
            med = interleaved_medians({"static": static, "symbolic": symbolic}, (x,), reps=reps)
            print(f"{name} {mode}: static compile+first call {(t1 - t0) * 1e3:.0f} ms; symbolic first call at "
                  f"{list(x.shape)} {(t2 - t1) * 1e3:.0f} ms, at new shape {list(second.shape)} "
                  f"{(t3 - t2) * 1e3:.0f} ms; cached call {med['symbolic'] * 1e6:.1f} us vs static "
                  f"{med['static'] * 1e6:.1f} us = {med['symbolic'] / med['static']:.3f} "
                  f"[{symbolic.describe_kernels()}]")


if __name__ == "__main__":
    main()
