"""The sharded path's overhead: a model over a mesh of forced CPU devices against one device.

    python benchmarks/sharded.py [--devices 8] [--reps 100]

The forced devices (``--xla_force_host_platform_device_count``) share this machine's cores,
so this measures what partitioning costs (collectives, per-device dispatch), not scaling.
For each anchor model at batch 64 (the transformer at batch 8): one device on XLA's kernels
(what a mesh runs), one device with jaxlite's native kernels (the default), data-parallel
over every device, and tensor-parallel (kernels split over a "model" axis of 4).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEVICES = int(sys.argv[sys.argv.index("--devices") + 1]) if "--devices" in sys.argv else 8
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}").strip()
sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, machine  # noqa: E402


def _blocking(fn):
    """``fn`` waiting for its (possibly sharded, asynchronous) result."""
    import jax

    return lambda x: jax.block_until_ready(fn(x))


def main() -> None:
    import jax
    import numpy as np
    from anchor_models import make_cnn, make_mlp, make_transformer
    from jax.sharding import PartitionSpec as P

    import jaxlite

    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 100
    print(machine("all") + f"; {DEVICES} forced CPU devices sharing these cores (no scaling claim)")
    cases = {"MLP": (make_mlp, 64, {"params.Dense_[01].kernel": P(None, "model")}),
             "CNN": (make_cnn, 64, {"params.Conv_*.kernel*": P(None, None, None, "model")}),
             "transformer": (make_transformer, 8, {"*Dense_0.kernel": P(None, "model")})}
    for name, (make, batch, specs) in cases.items():
        fn, (x,) = make()
        x = np.repeat(np.asarray(x), batch, axis=0)
        for mode in (None, "dynamic"):
            model = jaxlite.convert(fn, x, quantize=mode)
            fns = {"1 device, XLA kernels": model.compile(targets=["xla"]), "1 device, native": model.compile(),
                   f"data-parallel x{DEVICES}": model.compile(mesh=jax.make_mesh((DEVICES,), ("data",)), batch_axis="data")}
            if DEVICES % 4 == 0:
                fns["tensor-parallel 2x4"] = model.compile(mesh=jax.make_mesh((DEVICES // 4, 4), ("data", "model")),
                                                           batch_axis="data", weight_sharding=specs)
            med = interleaved_medians({k: _blocking(f) for k, f in fns.items()}, (x,), reps=reps)
            base = med["1 device, XLA kernels"]
            print(f"{name} {mode or 'float32'} batch {batch}: " + "; ".join(
                f"{k} {v * 1e3:.2f} ms ({v / base:.2f}x)" for k, v in med.items()))


if __name__ == "__main__":
    main()
