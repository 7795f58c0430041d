"""The first compile() and call of a model after installation: no compiler, no cache.

    python benchmarks/first_compile.py

Saves three anchor models (MLP, ResNet-18, transformer; anchor_models.py) in float32,
bfloat16 and ``dynamic`` mode, then for each starts a fresh process with an empty PATH (no C++ compiler reachable) and HOME / JAXLITE_CACHE set to
an empty folder, loads the model and times ``compile()`` and the first call. Afterwards the
folder must still be empty and the native CPU target must have been used: the kernels come
from the installed build, nothing is compiled or cached at run time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, shutil, sys, time
t0 = time.perf_counter()
import numpy as np
import jaxlite
from jaxlite.runtime import available_targets
t1 = time.perf_counter()
model = jaxlite.load(sys.argv[1])
x = np.load(sys.argv[2])
t2 = time.perf_counter()
exe = model.compile()
t3 = time.perf_counter()
np.asarray(exe(x))
t4 = time.perf_counter()
np.asarray(exe(x))
t5 = time.perf_counter()
print(json.dumps({"compiler on PATH": shutil.which("g++") or shutil.which("c++") or shutil.which("cc"),
                  "targets": list(exe.targets), "available": available_targets(), "direct": exe.direct,
                  "import s": t1 - t0, "load s": t2 - t1, "compile s": t3 - t2, "first call s": t4 - t3,
                  "second call s": t5 - t4}))
"""


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import numpy as np
    from anchor_models import make_mlp, make_resnet18, make_transformer
    from common import machine

    import jaxlite

    print(machine("all"))
    work = Path(tempfile.mkdtemp())
    models = {"MLP": make_mlp(), "ResNet-18": make_resnet18(), "transformer": make_transformer()}
    cases = {f"{name} {mode}": (fn, args, mode) for name, (fn, args) in models.items()
             for mode in ("float32", "bfloat16", "dynamic")}
    for name, (fn, args, mode) in cases.items():
        path, x_path = work / f"{name.replace(' ', '_')}.jlite", work / f"{name.split()[0]}_x.npy"
        jaxlite.convert(fn, *args, quantize=None if mode == "float32" else mode).save(path)
        np.save(x_path, np.asarray(args[0]))
        home = Path(tempfile.mkdtemp())
        env = {"PATH": "", "HOME": str(home), "JAXLITE_CACHE": str(home / "cache"), "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(x_path)], env=env, capture_output=True,
                             text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        written = [str(p.relative_to(home)) for p in home.rglob("*")]
        print(f"{name}: compile() {result['compile s']:.2f} s + first call {result['first call s']:.2f} s = "
              f"{result['compile s'] + result['first call s']:.2f} s, second call {result['second call s'] * 1e3:.2f} ms "
              f"(import {result['import s']:.2f} s, "
              f"load {result['load s']:.2f} s); targets {', '.join(result['targets'])}, direct={result['direct']}; "
              f"compiler on PATH: {result['compiler on PATH']}; files written to HOME/JAXLITE_CACHE: "
              f"{written or 'none'}")


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
