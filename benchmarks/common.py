"""Shared benchmark helpers: thread control, interleaved timing, machine description."""

from __future__ import annotations

import os
import sys

from jaxlite.timing import interleaved_medians  # noqa: F401  (re-exported for the scripts)


def configure_threads(argv: list[str]) -> str:
    """Call before importing jax. ``--threads 1`` pins the whole process to one core: XLA's
    thread-count flags alone leave jax.jit's float32 dots (YNNPACK fusions, own thread pool)
    running on every core -- measured here: a 1024^3 float32 dot took 1.87 cores and 11.0
    ms under ``intra_op_parallelism_threads=1``, 1.00 core and 21.0 ms pinned.

    Pinned, jax's asynchronous CPU dispatch runs every computation on a second thread that
    shares the one core with the waiting caller: measured here, ``jit(lambda x: x + 1)`` on a
    64x64 array took 20 us that way and 9 us run inline. So ``--threads 1`` also turns async
    dispatch off (for jax.jit and jaxlite alike), as LiteRT's Invoke runs on the caller."""
    threads = "all"
    if "--threads" in argv:
        threads = argv[argv.index("--threads") + 1]
    if threads == "1":
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()
        os.environ.setdefault("JAX_CPU_ENABLE_ASYNC_DISPATCH", "false")
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    return threads


def machine(threads: str) -> str:
    """The CPU (model, cores, ISA features), thread setting, jax, and jaxlite's kernel targets."""
    import jax

    from jaxlite.runtime import available_targets, cpu, onednn_calls, onednn_kernels

    return (f"{cpu.describe()}; threads={threads}, jax {jax.__version__}, backend {jax.default_backend()}, "
            f"python {sys.version.split()[0]}; jaxlite targets: {', '.join(available_targets())}; "
            f"oneDNN: {onednn_calls.kernel_paths()}"
            + (f"; bfloat16 {onednn_calls.kernel_paths('bfloat16')}" if onednn_kernels.computes_bfloat16()
               and onednn_calls.unavailable() is None else "")
            + (f"; int8 {onednn_calls.int8_kernel_paths()}" if "cpu-onednn-int8" in available_targets() else ""))


def peak_rss_mb() -> float:
    """VmHWM: the peak RSS of this process image (ru_maxrss would include the parent's,
    which a forked child inherits across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
