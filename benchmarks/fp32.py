"""Latency of jaxlite float32 with no optimization passes over jax.jit, same run, per example.

    python benchmarks/fp32.py [--threads 1] [--reps 100]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import configure_threads, interleaved_medians, machine  # noqa: E402

THREADS = configure_threads(sys.argv)

import jax  # noqa: E402

import jaxlite  # noqa: E402
from jaxlite.examples import digits_cnn, digits_mlp, transformer  # noqa: E402

CASES = {
    "digits MLP (batch 64)": lambda: digits_mlp.factory(64),
    "digits CNN (batch 64)": lambda: digits_cnn.factory(64),
    "transformer block (d64, seq 16)": lambda: transformer.factory(),
    "transformer 4L (d256, 4 heads, seq 128)": lambda: transformer.factory(4, 256, 4, 128),
}


def main() -> None:
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 100
    print(f"machine: {machine(THREADS)}; medians of {reps} interleaved calls")
    print(f"{'model':42s} {'jax.jit':>10s} {'jaxlite':>10s} {'ratio':>7s}")
    for name, make in CASES.items():
        fn, args = make()
        exe = jaxlite.compile(fn, *args, passes="")
        t = interleaved_medians({"jit": jax.jit(fn), "jaxlite": exe}, args, reps=reps)
        print(f"{name:42s} {t['jit'] * 1e6:8.0f}us {t['jaxlite'] * 1e6:8.0f}us {t['jaxlite'] / t['jit']:7.3f}")


if __name__ == "__main__":
    main()
