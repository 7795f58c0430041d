"""Output error of the quantized modes beside LiteRT's and ONNX Runtime's, averaged over inputs.

    python benchmarks/quantized_error.py [--inputs 20] [--only anchor-cnn]

One input's error swings by tens of percent between inputs (quantize.py's ``err`` column is
one input's), too much to tell two schemes of similar fidelity apart. Here each of the four
anchor models (anchor_models.py) runs ``--inputs`` random inputs, drawn like its calibration
data but from another seed, through jax.jit float32, jaxlite (``dynamic``, ``int8``) and the
reference runtimes' files of the same modes (reference_runtimes.py; rows appear where the
``bench`` extra is installed), and prints the relative L2 error against jax.jit per runtime:
mean, and the worst input.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import configure_threads, machine  # noqa: E402

configure_threads(["--threads", "1"])

import jax  # noqa: E402
import numpy as np  # noqa: E402
from anchor_models import ANCHORS, calibration  # noqa: E402
from reference_runtimes import litert_runners, onnxruntime_runners  # noqa: E402

import jaxlite  # noqa: E402


def relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def main() -> None:
    count = int(sys.argv[sys.argv.index("--inputs") + 1]) if "--inputs" in sys.argv else 20
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    print(f"{machine('1')}; relative L2 error against jax.jit float32 over {count} random inputs")
    print(f"{'model':28s} {'runtime':16s} {'mean':>9s} {'worst':>9s}")
    for name, (make, key) in ANCHORS.items():
        if only is not None and not key.startswith(only):
            continue
        fn, args = make()
        calib = calibration(args)
        inputs = calibration(args, count=count, seed=11)
        runners = {}
        for mode in ("dynamic", "int8"):
            exe = jaxlite.convert(fn, *args, quantize=mode, calibration=calib if mode == "int8" else None).compile()
            runners[f"jaxlite {mode}"] = exe
        references = {**litert_runners(fn, args, calib, "1"), **onnxruntime_runners(fn, args, calib, "1")}
        for label, (run, _) in references.items():
            if run is not None and not label.endswith("float32"):
                runners[label] = run
        reference = jax.jit(fn)
        errors = {label: [] for label in runners}
        for x in inputs:
            want = reference(*x)
            for label, run in runners.items():
                errors[label].append(relative_error(run(*[np.asarray(a) for a in x]), want))
        for label in sorted(errors, key=lambda k: (k.split()[-1], k)):
            e = errors[label]
            print(f"{name:28s} {label:16s} {np.mean(e):9.2e} {np.max(e):9.2e}", flush=True)


if __name__ == "__main__":
    main()
