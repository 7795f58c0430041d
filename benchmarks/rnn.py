"""A recurrent model (flax GRU 256 + LSTM 256 over 50 steps, batch 16) against jax.jit float32.

    python benchmarks/rnn.py [--threads 1|all] [--reps 15]

Rows: jaxlite float32, ``dynamic`` and ``int8`` (both run the loop's matmuls as dynamic
int8: calibration sees no single step), and, for comparison, ``dynamic`` without the
``capture-constants`` pass -- the cell's kernels then reach the scan as operands, stay
float32 and are quantized again on every step as activations. Defaults to one pinned core.
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
import numpy as np  # noqa: E402

import jaxlite  # noqa: E402
from jaxlite.passes import DEFAULT_PIPELINE  # noqa: E402

UNCAPTURED = ",".join(p for p in DEFAULT_PIPELINE.split(",") if p != "capture-constants")


class Recurrent(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.RNN(nn.GRUCell(256))(x)
        y = nn.RNN(nn.OptimizedLSTMCell(256))(y)
        return nn.Dense(10)(y[:, -1])


def main() -> None:
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 15
    x = np.random.default_rng(0).standard_normal((16, 50, 64)).astype(np.float32)
    module = Recurrent()
    variables = module.init(jax.random.PRNGKey(0), x)

    def fn(x):
        return module.apply(variables, x)

    jitted = jax.jit(fn)
    ref = np.asarray(jitted(x))
    models = {"float32": jaxlite.convert(fn, x),
              "dynamic": jaxlite.convert(fn, x, quantize="dynamic"),
              "int8": jaxlite.convert(fn, x, quantize="int8", calibration=[(x,)]),
              "dynamic uncapt.": jaxlite.convert(fn, x, quantize="dynamic", passes=UNCAPTURED)}
    runs = {"jit": jitted, **{k: m.compile() for k, m in models.items()}}
    t = interleaved_medians(runs, (x,), reps=reps)
    print(f"machine: {machine(THREADS)}; medians of {reps} interleaved calls; ratio = time / jax.jit float32")
    print(f"{'jaxlite':16s} {'time':>9s} {'ratio':>6s} {'err':>8s} {'weights':>9s}   (jax.jit {t['jit'] * 1e3:.2f} ms)")
    for name, model in models.items():
        err = np.linalg.norm(np.asarray(runs[name](x)) - ref) / np.linalg.norm(ref)
        print(f"{name:16s} {t[name] * 1e3:7.2f}ms {t[name] / t['jit']:6.3f} {err:8.1e} "
              f"{model.weights.nbytes / models['float32'].weights.nbytes:8.3f}x")


if __name__ == "__main__":
    main()
