"""A ConvTranspose decoder (DCGAN-like: 8x8x128 -> 64x64x3, batch 8) against jax.jit float32.

    python benchmarks/transposed_conv.py [--threads 1|all] [--reps 15]

Rows: jaxlite float32 with the default pipeline (``split-transposed-conv``: one ordinary
convolution per output phase) and without that pass (one convolution over the input with
zeros inserted, as jax traces it), and ``dynamic`` / ``int8`` with and without the split.
Defaults to one pinned core.
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

WHOLE = ",".join(p for p in DEFAULT_PIPELINE.split(",") if p != "split-transposed-conv")


class Decoder(nn.Module):
    @nn.compact
    def __call__(self, z):
        x = nn.relu(nn.ConvTranspose(64, (4, 4), strides=(2, 2))(z))    # 8 -> 16
        x = nn.relu(nn.ConvTranspose(32, (4, 4), strides=(2, 2))(x))    # 16 -> 32
        x = nn.relu(nn.ConvTranspose(16, (4, 4), strides=(2, 2))(x))    # 32 -> 64
        return nn.Conv(3, (3, 3))(x)


def main() -> None:
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 15
    z = np.random.default_rng(0).standard_normal((8, 8, 8, 128)).astype(np.float32)
    module = Decoder()
    variables = module.init(jax.random.PRNGKey(0), z)

    def fn(z):
        return module.apply(variables, z)

    jitted = jax.jit(fn)
    ref = np.asarray(jitted(z))
    runs = {"jit": jitted}
    for mode in (None, "dynamic", "int8"):
        for label, passes in (("split", DEFAULT_PIPELINE), ("whole", WHOLE)):
            model = jaxlite.convert(fn, z, quantize=mode, passes=passes,
                                    calibration=[(z,)] if mode == "int8" else None)
            runs[f"{mode or 'float32'} {label}"] = model.compile()
    t = interleaved_medians(runs, (z,), reps=reps)
    print(f"machine: {machine(THREADS)}; medians of {reps} interleaved calls; ratio = time / jax.jit float32")
    print(f"{'jaxlite':16s} {'time':>9s} {'ratio':>6s} {'err':>8s}   (jax.jit {t['jit'] * 1e3:.2f} ms)")
    for name, run in runs.items():
        if name == "jit":
            continue
        err = np.linalg.norm(np.asarray(run(z)) - ref) / np.linalg.norm(ref)
        print(f"{name:16s} {t[name] * 1e3:7.2f}ms {t[name] / t['jit']:6.3f} {err:8.1e}")


if __name__ == "__main__":
    main()
