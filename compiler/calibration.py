"""Activation ranges for full-integer quantization: run the float model on representative
inputs and record max |x| (or a high percentile of |x|) of every value a quantized op
reads or writes."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from rich.progress import track
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import SSAValue

from jaxlite.dialects.signature import Signature
from jaxlite.dialects.weights import WeightStore
from jaxlite.errors import ConversionError
from jaxlite.runtime.taps import tapped_program


def _progress(items: list, description: str):
    return track(items, description=description, transient=True, disable=not sys.stderr.isatty())


def activation_ranges(module: ModuleOp, values: Sequence[SSAValue], *, weights: WeightStore,
                      signature: Signature, calibration: Iterable, method: str = "max",
                      percentile: float = 99.99) -> dict[SSAValue, float]:
    """max |x| of each of ``values`` (SSA values of ``module``'s @main body) over the
    calibration batches; ``method="percentile"`` uses the given percentile of |x| per batch
    (the largest over batches), which ignores rare outliers."""
    if method not in ("max", "percentile"):
        raise ConversionError(f"calibration method must be 'max' or 'percentile', got {method!r}")
    batches = list(calibration)
    if not batches:
        raise ConversionError("calibration data is empty: give at least one example-argument tuple")

    def stats(taps):
        if method == "max":
            return [jnp.max(jnp.abs(t)) for t in taps]
        return [jnp.percentile(jnp.abs(t).reshape(-1), percentile) for t in taps]

    run = tapped_program(module, weights, values, stats)
    sig = signature
    ranges = np.zeros(len(values))
    for batch in _progress(batches, "calibrating"):
        args = batch if isinstance(batch, tuple) else (batch,)
        try:
            leaves = sig.in_tree.flatten(args, "calibration batch")
        except ValueError as e:
            raise ConversionError(f"calibration batch does not match the model's inputs: {e}") from None
        for x, spec in zip(leaves, sig.inputs, strict=True):
            if tuple(np.shape(x)) != spec.shape:
                raise ConversionError(f"calibration batch: {spec.name} has shape {np.shape(x)}, "
                                      f"the model takes {spec.describe()}")
        found = jax.device_get(run([jnp.asarray(x, s.dtype) for x, s in zip(leaves, sig.inputs, strict=True)]))
        ranges = np.maximum(ranges, np.asarray(found))
    return {v: float(r) for v, r in zip(values, ranges, strict=True)}
