"""Resident weight memory of a loaded quantized model, as peak RSS, against float32.

    python benchmarks/quantized_memory.py [--layers 8] [--width 2048]

Each mode is loaded and run in a fresh process: peak RSS minus the process's RSS before
loading (jax imported, backend started), and the steady state after the run (malloc_trim).
Both include XLA's compiled code and compile-time scratch (a few tens of MiB), the same
for every mode. `dynamic` and `int8` keep their weights int8 (target <= 0.3x of float32);
`int8-weights` expands them to float at load, as TFLite does, and `float16` upcasts on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_mb  # noqa: E402


def child(path: str) -> None:
    import jax
    import numpy as np

    import jaxlite

    jax.block_until_ready(jax.numpy.ones(3) + 1)  # start the backend before the baseline
    with open("/proc/self/statm") as f:
        base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    model = jaxlite.load(path)
    x = np.ones(model.signature.inputs[0].shape, np.float32)
    exe = model.compile()
    jax.block_until_ready(exe(x))
    del model  # only what the executable holds stays resident
    import ctypes
    import gc
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    peak = peak_rss_mb()
    with open("/proc/self/statm") as f:
        steady = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    print(json.dumps({"extra_mb": peak - base, "steady_mb": steady - base}))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
        return
    layers = int(sys.argv[sys.argv.index("--layers") + 1]) if "--layers" in sys.argv else 16
    width = int(sys.argv[sys.argv.index("--width") + 1]) if "--width" in sys.argv else 2048
    import jax.numpy as jnp
    import numpy as np

    import jaxlite

    rng = np.random.default_rng(0)
    ws = [jnp.asarray(rng.standard_normal((width, width), dtype=np.float32) * 0.02) for _ in range(layers)]

    def fn(x):
        for w in ws:
            x = jnp.tanh(x @ w)
        return x

    x = np.ones((8, width), np.float32)
    tmp = tempfile.mkdtemp()
    print(f"{layers} dense layers of {width}x{width} ({layers * width * width / 1e6:.1f}M parameters); "
          "peak RSS above the pre-load baseline, fresh process per mode")
    results = {}
    for mode in (None, "float16", "int8-weights", "dynamic", "int8"):
        model = jaxlite.convert(fn, x, quantize=mode, calibration=[(x,)] if mode == "int8" else None)
        path = os.path.join(tmp, f"{mode}.jlite")
        model.save(path)
        out = subprocess.run([sys.executable, __file__, "--child", path], capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        peak, steady = results[mode]["extra_mb"], results[mode]["steady_mb"]
        print(f"{mode or 'float32':13s} peak {peak:7.1f} MiB ({peak / results[None]['extra_mb']:.2f}x)   "
              f"steady {steady:7.1f} MiB ({steady / results[None]['steady_mb']:.2f}x)")


if __name__ == "__main__":
    main()
