"""Every precision of jaxlite beside LiteRT and ONNX Runtime, vs jax.jit float32, same run:
latency ratio, file size and output error per mode.

    python benchmarks/quantize.py [--threads 1|all] [--reps 30] [--only anchor-resnet]
    python benchmarks/quantize.py --device gpu [--reps 30] [--only resnet] [--json gpu.json]

Without ``--threads`` it runs twice, one process each: pinned to one core, then all cores.
With ``--device gpu`` it runs once, jax.jit and jaxlite both on the first GPU (inputs
placed there beforehand), and adds throughput-sized batches (ResNet-18 at 64 and 256, the
transformer at 32, the CNN at 64, the digits MLP at 8192): at batch 1 a GPU is bound by
kernel launches, not by the GEMMs. ``--json FILE`` writes every row as it goes
(``{"device", "jax", "rows": [{"model", "batch", "mode", "ratio"}]}``, rewritten after each
model, so a run cut short still leaves the rows it measured).

The models: the four anchors of the side-by-side comparison (anchor_models.py: MLP, CNN,
ResNet-18, transformer, batch 1, calibrated on 100 random inputs), then the examples.
LiteRT and ONNX Runtime rows (float32, dynamic-range int8, full-integer int8; see
reference_runtimes.py) appear where ``pip install -e ".[bench]"`` installed them. Each model's
jaxlite rows name the kernel targets that served its ops (and whether calls skip XLA).
``err`` is the relative L2 error of the output against jax.jit float32's. ``ratio`` times
single interleaved calls (cold caches: every other runtime ran in between), ``warm`` runs of
calls in a row (an inference loop); they differ on the small digits models.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

DEVICE = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
if __name__ == "__main__" and "--threads" not in sys.argv and DEVICE == "cpu":  # both configurations, fresh processes
    for threads in ("1", "all"):
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--threads", threads], check=True)
    sys.exit(0)

sys.path.insert(0, str(Path(__file__).parent))
from common import configure_threads, interleaved_medians, machine  # noqa: E402

THREADS = configure_threads(sys.argv)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from anchor_models import ANCHORS, calibration, make_cnn, make_resnet18, make_transformer  # noqa: E402
from reference_runtimes import litert_runners, onnxruntime_runners  # noqa: E402

import jaxlite  # noqa: E402
from jaxlite.examples import digits, digits_cnn, digits_mlp, resnet, transformer  # noqa: E402

CASES = {
    **ANCHORS,
    "digits MLP (batch 64)": (lambda: digits_mlp.factory(64), "mlp"),
    "digits CNN (batch 64)": (lambda: digits_cnn.factory(64), "cnn"),
    "transformer 4L (d256, seq 128)": (lambda: transformer.factory(4, 256, 4, 128), "transformer"),
    "ResNet-18 (224x224, batch 1)": (lambda: resnet.factory(), "resnet"),
}


def _tiled(example: tuple, batch: int) -> tuple:
    """(fn, args) with the example's inputs repeated to ``batch`` rows (the held-out split
    of the digits has 359)."""
    fn, args = example
    return fn, tuple(np.resize(a, (batch, *a.shape[1:])) for a in args)


GPU_CASES = {  # where a GPU's GEMMs have work enough to show
    "ResNet-18 (batch 64)": (lambda: _tiled(make_resnet18(), 64), "anchor-resnet-64"),
    "ResNet-18 (batch 256)": (lambda: _tiled(make_resnet18(), 256), "anchor-resnet-256"),
    "transformer 4L d256 s128 (batch 32)": (lambda: _tiled(make_transformer(), 32), "anchor-transformer-32"),
    "CNN 16x16 (batch 64)": (lambda: _tiled(make_cnn(), 64), "anchor-cnn-64"),
    "digits MLP (batch 8192)": (lambda: _tiled(digits_mlp.factory(), 8192), "mlp-8192"),
}
MODES = ("bfloat16", "float16", "int8-weights", "dynamic", "int8")
WARM_BLOCK = 5  # calls in a row per function for the warm column (jaxlite/timing.py)


def calibration_for(key: str, args: tuple) -> list[tuple]:
    if key.startswith("anchor") and args[0].shape[0] > 1:  # a throughput batch: 4 batches of random inputs
        return calibration(args, 4)
    if key.startswith("anchor"):
        return calibration(args)
    if key.startswith(("mlp", "cnn")):
        x = digits.load(images=key.startswith("cnn"))[0]
        batch = args[0].shape[0]
        if batch > 512:  # one batch: the training images, repeated
            return [(np.resize(x, (batch, *x.shape[1:])),)]
        return [(x[i:i + batch],) for i in range(0, 512, batch)]
    return [args]  # random-weight models: the example input is as representative as any


def main() -> None:
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 30
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    gpu = f"; device {jax.devices(DEVICE)[0].device_kind}" if DEVICE != "cpu" else ""
    print(f"machine: {machine(THREADS)}{gpu}; medians of {reps} interleaved calls; ratio = time / jax.jit float32; "
          f"warm: the same in runs of {WARM_BLOCK} calls per function, the first of each dropped")
    print(f"{'model':32s} {'mode':15s} {'jax.jit':>9s} {'time':>9s} {'ratio':>6s} {'warm':>6s} {'file':>10s} "
          f"{'size':>6s} {'err':>8s}")
    tmp = tempfile.mkdtemp()
    json_path = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    rows: list[dict] = []
    on_gpu = DEVICE != "cpu"
    device = jax.devices(DEVICE)[0] if on_gpu else None
    for name, (make, key) in ({**ANCHORS, **GPU_CASES} if on_gpu else CASES).items():
        if only and only not in key:
            continue
        fn, args = make()
        if on_gpu:  # jax.jit and jaxlite alike start from inputs already on the device
            args = jax.device_put(args, device)
        float_model = jaxlite.convert(fn, *args)
        float_path = os.path.join(tmp, f"{key}.jlite")
        float_model.save(float_path)
        float_size = os.path.getsize(float_path)
        runs = {"float32": float_model.compile(device=device)}
        sizes = {"float32": float_size}
        failed = {}
        for mode in MODES:
            try:
                model = jaxlite.convert(fn, *args, quantize=mode,
                                        calibration=calibration_for(key, args) if mode == "int8" else None)
                path = os.path.join(tmp, f"{key}.{mode}.jlite")
                model.save(path)
                sizes[mode] = os.path.getsize(path)
                runs[mode] = jaxlite.load(path).compile(device=device)
            except Exception as e:  # reported in the table; the other modes still run
                failed[mode] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
        references = {} if on_gpu else {**litert_runners(fn, args, calibration_for(key, args), THREADS),
                                         **onnxruntime_runners(fn, args, calibration_for(key, args), THREADS)}
        for label, (run, nbytes) in references.items():
            if run is None:
                failed[label] = nbytes
            else:
                runs[label], sizes[label] = run, nbytes
        jitted = jax.jit(fn)
        ref = np.asarray(jitted(*args))
        t = interleaved_medians({"jit": jitted, **runs}, args, reps=reps)
        warm = interleaved_medians({"jit": jitted, **runs}, args, reps=max(1, reps // 2), block=WARM_BLOCK)
        for mode, run in runs.items():
            out = np.asarray(run(*args))
            err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
            print(f"{name:32s} {mode:15s} {t['jit'] * 1e3:7.2f}ms {t[mode] * 1e3:7.2f}ms "
                  f"{t[mode] / t['jit']:6.3f} {warm[mode] / warm['jit']:6.3f} {sizes[mode] / 1024:8.0f}KB "
                  f"{sizes[mode] / float_size:6.3f} {err:8.1e}", flush=True)
            rows.append({"model": name, "batch": int(np.shape(jax.tree.leaves(args)[0])[0]), "mode": mode,
                         "ratio": round(t[mode] / t["jit"], 4), "warm_ratio": round(warm[mode] / warm["jit"], 4),
                         "ms": round(t[mode] * 1e3, 4), "jit_ms": round(t["jit"] * 1e3, 4), "rel_l2": float(err)})
        kernels = {mode: run.describe_kernels() for mode, run in runs.items() if hasattr(run, "describe_kernels")}
        for mode, description in kernels.items():
            print(f"{'':32s} {mode:15s} kernels: {description}")
        for label, reason in failed.items():
            print(f"{name:32s} {label:15s} failed: {reason}")
        if json_path:
            write_json(json_path, rows, device)


def write_json(path: str, rows: list[dict], device) -> None:
    """The rows so far, as the GPU issue's results file wants them (rewritten whole each time)."""
    import json

    kind = device.device_kind if device is not None else machine(THREADS)
    with open(path, "w") as f:
        json.dump({"device": kind, "jax": jax.__version__, "threads": THREADS, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
