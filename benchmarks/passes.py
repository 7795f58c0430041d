"""What the optimization pipeline does per example: jaxpr equations vs ops in the final IR,
convert time, and latency of the optimized float32 model over jax.jit in the same run.

    python benchmarks/passes.py [--threads 1] [--reps 50]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import configure_threads, interleaved_medians, machine  # noqa: E402

THREADS = configure_threads(sys.argv)

import jax  # noqa: E402

import jaxlite  # noqa: E402
from jaxlite.dialects.module import op_counts, parse_module  # noqa: E402
from jaxlite.examples import digits_cnn, digits_mlp, resnet, transformer  # noqa: E402

CASES = {
    "digits MLP (batch 64)": lambda: digits_mlp.factory(64),
    "digits CNN (batch 64)": lambda: digits_cnn.factory(64),
    "transformer 4L (d256, seq 128)": lambda: transformer.factory(4, 256, 4, 128),
    "ResNet-18 (224x224, batch 1)": lambda: resnet.factory(),
}


def count_eqns(jaxpr) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        subs = [v for v in eqn.params.values() if hasattr(v, "eqns") or hasattr(getattr(v, "jaxpr", None), "eqns")]
        n += 1 if not subs else 0
        for s in subs:
            n += count_eqns(s if hasattr(s, "eqns") else s.jaxpr)
    return n


def main() -> None:
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 50
    print(f"machine: {machine(THREADS)}; medians of {reps} interleaved calls")
    print(f"{'model':32s} {'jaxpr eqns':>10s} {'IR ops':>7s} {'final ops':>9s} {'convert':>8s} "
          f"{'jax.jit':>9s} {'jaxlite':>9s} {'ratio':>6s}")
    for name, make in CASES.items():
        fn, args = make()
        eqns = count_eqns(jax.make_jaxpr(fn)(*args).jaxpr)
        t0 = time.perf_counter()
        model = jaxlite.convert(fn, *args)
        convert_s = time.perf_counter() - t0
        traced_ops = sum(op_counts(parse_module(model.ir(after="trace"))).values())
        final_ops = sum(model.op_counts().values())
        exe = model.compile()
        t = interleaved_medians({"jit": jax.jit(fn), "jaxlite": exe}, args, reps=reps)
        print(f"{name:32s} {eqns:10d} {traced_ops:7d} {final_ops:9d} {convert_s:7.2f}s "
              f"{t['jit'] * 1e3:7.2f}ms {t['jaxlite'] * 1e3:7.2f}ms {t['jaxlite'] / t['jit']:6.3f}")


if __name__ == "__main__":
    main()
