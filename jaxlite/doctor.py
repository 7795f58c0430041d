"""``jaxlite doctor``: what this machine gives jaxlite -- the CPU, its ISA features, jax's
devices, and each kernel target, available or not and why."""

from __future__ import annotations

import jax

from jaxlite._version import __version__
from jaxlite.runtime import cpu, onednn_calls, onednn_kernels
from jaxlite.runtime.executable import choose_targets
from jaxlite.runtime.registry import TARGETS, target_status


def report() -> list[tuple[str, str]]:
    """(item, value) rows, in display order."""
    rows = [("jaxlite", __version__), ("jax", f"{jax.__version__} (devices: {', '.join(_devices())})"),
            ("CPU", cpu.describe())]
    for target, why in target_status():
        rows.append((f"target {target.name}", ("available" if why is None else f"unavailable: {why}")
                     + f" -- {target.description}"))
    rows.append(("oneDNN float32 kernels", onednn_calls.kernel_paths()))
    if onednn_calls.unavailable() is None:
        bf16 = (onednn_calls.kernel_paths("bfloat16") if onednn_kernels.computes_bfloat16()
                else "none: bfloat16 models are upcast to float32 (no AVX512-BF16 or AMX-BF16 here)")
        rows.append(("oneDNN bfloat16 kernels", bf16))
        int8 = TARGETS["cpu-onednn-int8"].unavailable()
        rows.append(("oneDNN int8 kernels", onednn_calls.int8_kernel_paths() if int8 is None
                     else f"not used: {int8}"))
    platform = jax.default_backend()
    rows.append((f"compile() on {platform}", "targets " + ", ".join(choose_targets(platform))
                 + (" (float16 models add xla-float16)" if platform == "gpu" else "")))
    return rows


def _devices() -> list[str]:
    try:
        return [f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}".strip() for d in jax.devices()]
    except RuntimeError as e:
        return [f"none ({e})"]
