"""``jaxlite summary``: what a model is made of, alone or side by side with another."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from jaxlite.compiler.model import Model
from jaxlite.dialects.module import op_counts


def summarize(model: Model, path: str | Path | None = None) -> dict:
    """Inputs/outputs, op counts by kind, parameters and bytes by dtype, file composition."""
    ops = op_counts(model.module)
    by_dtype: dict[str, list[int]] = {}
    for arr in model.weights.arrays.values():
        entry = by_dtype.setdefault(np.dtype(arr.dtype).name, [0, 0])
        entry[0] += int(arr.size)
        entry[1] += int(arr.nbytes)
    out = {
        "inputs": [(s.name, s.describe()) for s in model.signature.inputs],
        "outputs": [(s.name, s.describe()) for s in model.signature.outputs],
        "ops": dict(sorted(ops.items())),
        "num_ops": sum(ops.values()),
        "parameters": model.num_parameters,
        "weights": len(model.weights),
        "by_dtype": {k: {"count": v[0], "bytes": v[1]} for k, v in sorted(by_dtype.items())},
        "weight_bytes": model.weights.nbytes,
        "quantization": model.metadata.get("quantization") or {"mode": "none (float)"},
    }
    if path is not None:
        path = Path(path)
        parts = {"manifest": 0, "IR text": 0, "weights": 0, "zip overhead": 0}
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = "manifest" if info.filename == "manifest.json" else \
                    "IR text" if info.filename == "model.mlir" else "weights"
                parts[key] += info.compress_size
        size = path.stat().st_size
        parts["zip overhead"] = size - sum(parts.values())
        out["file"] = {"path": str(path), "bytes": size, "parts": parts}
    return out


def _kib(n: int) -> str:
    return f"{n:,} B" if n < 10_000 else f"{n / 1024:,.1f} KiB" if n < 10 * 2**20 else f"{n / 2**20:,.1f} MiB"


def rows(s: dict) -> list[tuple[str, str]]:
    """(field, value) rows of a summary, in display order."""
    out = [("inputs", ", ".join(f"{n}: {t}" for n, t in s["inputs"])),
           ("outputs", ", ".join(f"{n}: {t}" for n, t in s["outputs"])),
           ("ops", str(s["num_ops"]))]
    out += [(f"  {k}", str(v)) for k, v in s["ops"].items()]
    out += [("parameters", f"{s['parameters']:,} in {s['weights']} weights"),
            ("weight bytes", _kib(s["weight_bytes"]))]
    out += [(f"  {k}", f"{v['count']:,} values, {_kib(v['bytes'])}") for k, v in s["by_dtype"].items()]
    q = s["quantization"]
    out.append(("quantization", q.get("mode", "?") + (f" (per-channel {q['per_channel']})" if "per_channel" in q else "")))
    if "file" in s:
        out.append(("file", _kib(s["file"]["bytes"])))
        out += [(f"  {k}", _kib(v)) for k, v in s["file"]["parts"].items()]
    return out


def side_by_side(a: dict, b: dict) -> list[tuple[str, str, str, str]]:
    """(field, first, second, ratio) rows comparing two summaries."""
    keys = ["num_ops", "parameters", "weight_bytes"]
    names = {"num_ops": "ops", "parameters": "parameters", "weight_bytes": "weight bytes"}
    out = []
    for k in keys:
        ratio = f"{b[k] / a[k]:.2f}x" if a[k] else "-"
        fmt = _kib if k == "weight_bytes" else (lambda v: f"{v:,}")
        out.append((names[k], fmt(a[k]), fmt(b[k]), ratio))
    for kind in sorted(set(a["ops"]) | set(b["ops"])):
        out.append((f"  {kind}", str(a["ops"].get(kind, 0)), str(b["ops"].get(kind, 0)), ""))
    for dt in sorted(set(a["by_dtype"]) | set(b["by_dtype"])):
        x, y = a["by_dtype"].get(dt, {"bytes": 0}), b["by_dtype"].get(dt, {"bytes": 0})
        out.append((f"  {dt} bytes", _kib(x["bytes"]), _kib(y["bytes"]), ""))
    if "file" in a and "file" in b:
        out.append(("file", _kib(a["file"]["bytes"]), _kib(b["file"]["bytes"]),
                    f"{b['file']['bytes'] / a['file']['bytes']:.2f}x"))
    out.append(("quantization", a["quantization"].get("mode", "?"), b["quantization"].get("mode", "?"), ""))
    return out
