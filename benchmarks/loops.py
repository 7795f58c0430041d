"""Models with loops against jax.jit float32: a recurrent model (flax GRU 256 + LSTM 256
over 50 steps, batch 16) and a scan over 8 stacked residual layers (d 256, batch 64).

    python benchmarks/loops.py [--threads 1|all] [--reps 15]

Rows: jaxlite float32, ``dynamic`` and ``int8`` (the RNN's loop matmuls are dynamic int8 in
both: calibration sees no single step), and ``dynamic`` without the pass that makes the
weights visible inside the loop (``capture-constants`` for the RNN, ``unroll-layer-scans``
for the layer stack): the kernels then stay float32 and are quantized again on every call
as activations. Defaults to one pinned core.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import configure_threads, interleaved_medians, machine  # noqa: E402

if "--threads" not in sys.argv:
    sys.argv += ["--threads", "1"]
THREADS = configure_threads(sys.argv)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxlite  # noqa: E402
from jaxlite.passes import DEFAULT_PIPELINE  # noqa: E402


def without(name: str) -> str:
    return ",".join(p for p in DEFAULT_PIPELINE.split(",") if p != name)


class Recurrent(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.RNN(nn.GRUCell(256))(x)
        y = nn.RNN(nn.OptimizedLSTMCell(256))(y)
        return nn.Dense(10)(y[:, -1])


def recurrent():
    x = np.random.default_rng(0).standard_normal((16, 50, 64)).astype(np.float32)
    module = Recurrent()
    variables = module.init(jax.random.PRNGKey(0), x)
    return (lambda x: module.apply(variables, x)), x, "capture-constants"


def layer_stack():
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.standard_normal((8, 256, 256)).astype(np.float32) / 16)
    b = jnp.asarray(rng.standard_normal((8, 256)).astype(np.float32) * 0.1)

    def fn(x):
        return jax.lax.scan(lambda h, wb: (h + jax.nn.gelu(h @ wb[0] + wb[1]), None), x, (w, b))[0]
    return fn, rng.standard_normal((64, 256)).astype(np.float32), "unroll-layer-scans"


def main() -> None:
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 15
    print(f"machine: {machine(THREADS)}; medians of {reps} interleaved calls; ratio = time / jax.jit float32")
    for title, make in (("GRU 256 + LSTM 256, 50 steps, batch 16", recurrent),
                        ("scan over 8 stacked layers, d 256, batch 64", layer_stack)):
        fn, x, key_pass = make()
        jitted = jax.jit(fn)
        ref = np.asarray(jitted(x))
        models = {"float32": jaxlite.convert(fn, x),
                  "dynamic": jaxlite.convert(fn, x, quantize="dynamic"),
                  "int8": jaxlite.convert(fn, x, quantize="int8", calibration=[(x,)]),
                  f"dynamic w/o {key_pass}": jaxlite.convert(fn, x, quantize="dynamic", passes=without(key_pass))}
        runs = {"jit": jitted, **{k: m.compile() for k, m in models.items()}}
        t = interleaved_medians(runs, (x,), reps=reps)
        print(f"\n{title} (jax.jit {t['jit'] * 1e3:.2f} ms)")
        print(f"{'jaxlite':34s} {'time':>9s} {'ratio':>6s} {'err':>8s} {'weights':>9s}")
        for name, model in models.items():
            err = np.linalg.norm(np.asarray(runs[name](x)) - ref) / np.linalg.norm(ref)
            print(f"{name:34s} {t[name] * 1e3:7.2f}ms {t[name] / t['jit']:6.3f} {err:8.1e} "
                  f"{model.weights.nbytes / models['float32'].weights.nbytes:8.3f}x")


if __name__ == "__main__":
    main()
