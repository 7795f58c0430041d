"""Fair latency measurement on a shared, noisy machine: calls of the functions being
compared are interleaved (alternating who goes first), so noise hits all of them alike.

One call at a time (``block=1``) measures each call after the others ran: caches and branch
predictors cold, as for a model called now and then. ``block=n`` runs n calls in a row per
function and keeps all but the first: warm, as in an inference loop (LiteRT's
benchmark_model)."""

from __future__ import annotations

import sys
import time

import numpy as np


def interleaved_times(fns: dict, args: tuple, reps: int = 50, warmup: int = 3,
                      progress: bool = False, block: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function over ``reps`` interleaved rounds (with ``block``
    > 1: the warm calls 2..block of each function's run of ``block`` calls per round)."""
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
            for i in range(block):
                t = time.perf_counter()
                jax.block_until_ready(fn(*args))
                if block == 1 or i > 0:
                    times[name].append(time.perf_counter() - t)
    return times


def interleaved_medians(fns: dict, args: tuple, reps: int = 50, warmup: int = 3,
                        block: int = 1) -> dict[str, float]:
    """Median seconds per call of each function (see interleaved_times)."""
    return {k: float(np.median(v)) for k, v in interleaved_times(fns, args, reps, warmup, block=block).items()}
