"""Activation ranges for full-integer quantization: run the float model on representative
inputs and record max |x| (or a high percentile of |x|) of every value a quantized op
reads or writes."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from rich.progress import track
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue

from jaxlite.dialects import dims
from jaxlite.dialects.int8 import QMAX
from jaxlite.dialects.jlax import WeightOp
from jaxlite.dialects.signature import Signature
from jaxlite.dialects.weights import WeightStore
from jaxlite.errors import ConversionError
from jaxlite.runtime.taps import tapped_program


def _progress(items: list, description: str):
    return track(items, description=description, transient=True, disable=not sys.stderr.isatty())


# activation ranges above this are reported (float32 models rarely see them on real data)
EXTREME_RANGE = 1e6


def activation_ranges(module: ModuleOp, values: Sequence[SSAValue], *, weights: WeightStore,
                      signature: Signature, calibration: Iterable, method: str = "max",
                      percentile: float = 99.99) -> dict[SSAValue, float]:
    """max |x| of each of ``values`` (SSA values of ``module``'s @main body) over the
    calibration batches; ``method="percentile"`` uses the given percentile of |x| per batch
    (the largest over batches), which ignores rare outliers.

    The data is checked first: batches must have the model's input shapes and dtypes, and no
    input may be all zeros or hold NaN/Inf (``ConversionError`` naming the input). Where the
    ranges found would quantize more than half of a layer's nonzero values to zero (an extreme value
    stretches the range), a warning names the inputs' ranges and those layers."""
    if method not in ("max", "percentile"):
        raise ConversionError(f"calibration method must be 'max' or 'percentile', got {method!r}")
    batches = list(calibration)
    if not batches:
        raise ConversionError("calibration data is empty: give at least one example-argument tuple")

    def stats(taps):
        top = [jnp.max(jnp.abs(t)) if method == "max" else jnp.percentile(jnp.abs(t).reshape(-1), percentile)
               for t in taps]
        # the median magnitude of the values that are not exactly zero (zeros, e.g. a ReLU's,
        # stay exact in int8)
        return top, [jnp.nanmedian(jnp.where(t != 0, jnp.abs(t), jnp.nan)) for t in taps]

    run = tapped_program(module, weights, values, stats)
    ranges, medians = np.zeros(len(values)), np.zeros(len(values))
    input_ranges = np.zeros(len(signature.inputs))
    for i, batch in enumerate(_progress(batches, "calibrating")):
        leaves = _checked_batch(batch, i, signature)
        input_ranges = np.maximum(input_ranges, [float(np.max(np.abs(x), initial=0)) for x in leaves])
        top, middle = jax.device_get(run([jnp.asarray(x) for x in leaves]))
        ranges, medians = np.maximum(ranges, top), medians + np.asarray(middle) / len(batches)
    for spec, top in zip(signature.inputs, input_ranges, strict=True):
        if top == 0 and spec.dtype.kind == "f":
            raise ConversionError(f"calibration data: input {spec.name} is all zeros in every batch: the int8 "
                                  "ranges would be meaningless; give representative inputs")
    broken = [v for v, r in zip(values, ranges, strict=True) if not np.isfinite(r)]
    if broken:
        raise ConversionError(f"calibration data: the model computes NaN/Inf on it at {', '.join(_layers(broken))} "
                              f"(input ranges: {_describe_ranges(signature, input_ranges)})")
    # |x| < step / 2 rounds to zero: "coarse" where it does for most of a layer's nonzero values
    coarse = [v for v, r, m in zip(values, ranges, medians, strict=True) if r / QMAX / 2 > m > 0]
    extreme = [v for v, r in zip(values, ranges, strict=True) if r > EXTREME_RANGE]
    if coarse or extreme:
        what = ("the int8 step would round more than half the values to zero" if coarse else
                f"activations exceed {EXTREME_RANGE:.0e}")
        warnings.warn(f"calibration data: inputs range up to {_describe_ranges(signature, input_ranges)}; {what} "
                      f"at {', '.join(_layers(coarse or extreme))} (check the data for extreme values, or use "
                      "calibration_method='percentile')", UserWarning, stacklevel=2)
    return {v: float(r) for v, r in zip(values, ranges, strict=True)}


def _checked_batch(batch, index: int, signature: Signature) -> list:
    """The input leaves of calibration batch ``index``, checked against the model's inputs."""
    args = batch if isinstance(batch, tuple) else (batch,)
    try:
        leaves = signature.in_tree.flatten(args, "calibration batch")
    except ValueError as e:
        raise ConversionError(f"calibration batch {index} does not match the model's inputs: {e}") from None
    out = []
    if signature.symbolic:
        try:
            signature = signature.specialized(dims.solve([s.shape for s in signature.inputs],
                                                         [np.shape(x) for x in leaves],
                                                         [f"input {s.name}" for s in signature.inputs]))
        except (ValueError, IndexError) as e:
            raise ConversionError(f"calibration batch {index} does not fit the model's inputs "
                                  f"({signature.describe_inputs()}): {e}") from None
    for x, spec in zip(leaves, signature.inputs, strict=True):
        dtype = np.result_type(x)
        if tuple(np.shape(x)) != spec.shape or dtype != spec.dtype:
            raise ConversionError(f"calibration batch {index}: input {spec.name} is {dtype.name}{list(np.shape(x))}, "
                                  f"the model takes {spec.describe()}"
                                  + (f" (convert it: .astype(np.{spec.dtype.name}))" if dtype != spec.dtype else ""))
        x = np.asarray(x)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ConversionError(f"calibration batch {index}: input {spec.name} holds NaN or Inf values")
        out.append(x)
    return out


def _describe_ranges(signature: Signature, ranges) -> str:
    return ", ".join(f"{spec.name}: {top:.3g}" for spec, top in zip(signature.inputs, ranges, strict=True))


def _layers(values: Sequence[SSAValue]) -> list[str]:
    """The layers (kernel weight names; else op names) that read or produce ``values``."""
    names: dict[str, None] = {}
    for v in values:
        ops = [use.operation for use in v.uses] + ([v.owner] if isinstance(v.owner, Operation) else [])
        for op in ops:
            kernel = op.operands[1].owner if len(op.operands) > 1 else None
            if isinstance(kernel, WeightOp):
                names.setdefault(kernel.weight_name)
        if not ops or not any(len(op.operands) > 1 and isinstance(op.operands[1].owner, WeightOp) for op in ops):
            names.setdefault(ops[0].name if ops else "an input")
    return list(names)
