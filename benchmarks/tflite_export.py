"""jaxlite's .tflite export beside TFLiteConverter's file of the same function (jax2tf ->
TFLiteConverter, as ``reference_runtimes`` makes it), per anchor model and mode: file size,
operator count, output error against jax.jit float32 (relative L2), and LiteRT's latency on
each file, timed interleaved in this process (medians).

Needs the ``bench`` extra (TensorFlow for TFLiteConverter)::

    python benchmarks/tflite_export.py --threads 1 [--models mlp,cnn] [--reps 200]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from common import configure_threads, interleaved_medians  # noqa: E402
from reference_runtimes import litert_runner, tflite_converter  # noqa: E402

THREADS = configure_threads(sys.argv)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from anchor_models import calibration, make_cnn, make_mlp, make_resnet18, make_transformer  # noqa: E402

import jaxlite  # noqa: E402
from jaxlite.compiler.tflite_export import export_tflite  # noqa: E402
from jaxlite.compiler.tflite_writer import builtin_counts  # noqa: E402
from jaxlite.runtime import cpu  # noqa: E402

MODELS = {"mlp": make_mlp, "cnn": make_cnn, "transformer": make_transformer, "resnet18": make_resnet18}
MODES = ("float32", "float16", "dynamic", "int8")
_JAXLITE_MODE = {"float32": None, "float16": "float16", "dynamic": "dynamic", "int8": "int8"}


def _arg(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def main() -> None:
    names = _arg("--models", ",".join(MODELS)).split(",")
    reps = int(_arg("--reps", "100"))
    print(f"machine: {cpu.describe()}; threads={THREADS}; jax {jax.__version__}; medians of {reps} "
          "interleaved LiteRT calls per file")
    print("| model | mode | size jaxlite / converter | ops jaxlite / converter | rel. L2 vs jax.jit "
          "jaxlite / converter (jaxlite's runtime) | LiteRT latency jaxlite / converter |")
    print("|---|---|---|---|---|---|")
    for name in names:
        fn, args = MODELS[name]()
        args = tuple(np.asarray(a) for a in args)
        ref = np.asarray(jax.jit(fn)(*args), np.float64)
        cal = calibration(args)
        for mode in MODES:
            q = _JAXLITE_MODE[mode]
            model = jaxlite.convert(fn, *args, quantize=q, calibration=cal if q == "int8" else None)
            ours = export_tflite(model)
            try:
                theirs = tflite_converter(fn, args, cal, mode)
            except Exception as e:  # noqa: BLE001  (the converter's failure is a result too)
                theirs = None
                print(f"  ({name} {mode}: TFLiteConverter failed: {type(e).__name__}: {str(e)[:120]})")
            runs = {"jaxlite": litert_runner(ours, THREADS)}
            if theirs is not None:
                runs["converter"] = litert_runner(theirs, THREADS)
            errors = {k: _rel(r(*args), ref) for k, r in runs.items()}
            own = _rel(model.compile()(*args), ref)
            times = interleaved_medians(runs, args, reps=reps)
            ours_ops = builtin_counts(ours)
            theirs_ops = builtin_counts(theirs) if theirs is not None else {}

            def pair(a, b, fmt):
                return f"{fmt(a)} / {fmt(b) if b is not None else '-'}"
            print(f"| {name} | {mode} | {pair(len(ours), theirs and len(theirs), lambda v: f'{v / 1e6:.3f} MB')} | "
                  f"{pair(sum(ours_ops.values()), theirs and sum(theirs_ops.values()), str)} | "
                  f"{pair(errors['jaxlite'], errors.get('converter'), lambda v: f'{v:.2e}')} ({own:.2e}) | "
                  f"{pair(times['jaxlite'] * 1e6, times.get('converter', None) and times['converter'] * 1e6, lambda v: f'{v:.0f} us')} |",
                  flush=True)
            print(f"  jaxlite: {ours_ops}\n  converter: {theirs_ops}", file=sys.stderr)


if __name__ == "__main__":
    main()
