"""Peak memory of converting, saving, loading and running a 100M-parameter float32 model.

    python benchmarks/memory.py [--params 100e6]

Each phase runs in a fresh process; peak RSS is read from the kernel (VmHWM). The
baseline is the same process after importing jax and jaxlite, before any weight exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import time

from common import peak_rss_mb  # noqa: E402


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def phase(name: str, path: str, n_params: float) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxlite

    base = current_rss_mb()
    width = 4096
    layers = max(1, int(round(n_params / (width * width))))
    t0 = time.perf_counter()
    x = np.ones((1, width), np.float32)
    if name == "convert_save":
        ws = [jnp.asarray(np.random.default_rng(i).standard_normal((width, width), dtype=np.float32) * 0.01)
              for i in range(layers)]

        def fn(x):
            for w in ws:
                x = jnp.tanh(x @ w)
            return x

        model = jaxlite.convert(fn, x)
        model.save(path)
        weight_mb = model.weights.nbytes / 2**20
    else:
        model = jaxlite.load(path)
        weight_mb = model.weights.nbytes / 2**20
        y = model.compile()(x)
        jax.block_until_ready(y)
    return {"phase": name, "layers": layers, "weight_mb": weight_mb, "baseline_mb": base,
            "peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - t0}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--phase":
        print(json.dumps(phase(sys.argv[2], sys.argv[3], float(sys.argv[4]))))
        return
    n_params = float(sys.argv[sys.argv.index("--params") + 1]) if "--params" in sys.argv else 100e6
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.jlite")
        print(f"{'phase':14s} {'weights':>9s} {'baseline':>9s} {'peak':>9s} {'peak-base':>10s} {'(peak-base)/weights':>20s} {'time':>7s}")
        for name in ("convert_save", "load_run"):
            out = subprocess.run([sys.executable, __file__, "--phase", name, path, str(n_params)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            extra = r["peak_mb"] - r["baseline_mb"]
            print(f"{name:14s} {r['weight_mb']:8.0f}M {r['baseline_mb']:8.0f}M {r['peak_mb']:8.0f}M "
                  f"{extra:9.0f}M {extra / r['weight_mb']:20.2f} {r['seconds']:6.1f}s")
        print(f"file size: {os.path.getsize(path) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
