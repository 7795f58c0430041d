"""Fair latency measurement on a shared, noisy machine: calls of the functions being
compared are interleaved (alternating who goes first), so noise hits all of them alike."""

from __future__ import annotations

import sys
import time

import numpy as np


def interleaved_times(fns: dict, args: tuple, reps: int = 50, warmup: int = 3,
                      progress: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each function over ``reps`` interleaved rounds."""
    import jax

    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn(*args))
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    rounds = range(reps)
    if progress and sys.stderr.isatty():
        try:
            from rich.progress import track

            rounds = track(rounds, description="benchmarking", transient=True)
        except ImportError:
            pass
    for _ in rounds:
        order.reverse()  # the second call of a pair runs warmer: alternate
        for name, fn in order:
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t)
    return times


def interleaved_medians(fns: dict, args: tuple, reps: int = 50, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function (see interleaved_times)."""
    return {k: float(np.median(v)) for k, v in interleaved_times(fns, args, reps, warmup).items()}
