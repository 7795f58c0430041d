"""Shared benchmark helpers: thread control, interleaved timing, machine description."""

from __future__ import annotations

import os
import platform
import sys
import time


def configure_threads(argv: list[str]) -> str:
    """Call before importing jax: ``--threads 1`` pins XLA:CPU to one thread."""
    threads = "all"
    if "--threads" in argv:
        threads = argv[argv.index("--threads") + 1]
    if threads == "1":
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()
    return threads


def machine(threads: str) -> str:
    import jax

    cpu = platform.processor() or platform.machine()
    return (f"{cpu}, {os.cpu_count()} cores, threads={threads}, jax {jax.__version__}, "
            f"backend {jax.default_backend()}, python {sys.version.split()[0]}")


def interleaved_medians(fns: dict, args: tuple, reps: int = 50, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each fn, alternating between them so noise hits all alike."""
    import jax
    import numpy as np

    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn(*args))
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    for _ in range(reps):
        order.reverse()  # alternate who goes first: the second call of a pair runs warmer
        for name, fn in order:
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def peak_rss_mb() -> float:
    """VmHWM: the peak RSS of this process image (ru_maxrss would include the parent's,
    which a forked child inherits across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
