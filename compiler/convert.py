"""convert(): trace a JAX function into a Model and run the optimization pipeline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from xdsl.utils.exceptions import VerifyException

from jaxlite.compiler.frontend import trace, with_dynamic_batch
from jaxlite.compiler.model import Model, print_ir_after_step
from jaxlite.dialects.module import print_module, verify_module
from jaxlite.errors import ConversionError
from jaxlite.passes import pipeline
from jaxlite.passes.quantize import MODES, QuantizePass


class _OutputChoiceError(Exception):
    """An ``outputs=`` index or key that does not name an output (raised while tracing)."""


def _pick(out, key):
    """Output ``key`` of a function's result: an index into a tuple/list, a key of a dict;
    a single array is the only output, so only index 0 selects it (whole)."""
    if isinstance(key, bool) or not isinstance(key, int | str):
        raise _OutputChoiceError(f"outputs: {key!r} is neither an index nor a key")
    if not isinstance(out, tuple | list | dict):
        if key == 0:
            return out
        raise _OutputChoiceError(f"outputs={key!r}: the function returns a single {type(out).__name__}, "
                                 "which only outputs=0 selects")
    if isinstance(out, dict):
        if key not in out:
            raise _OutputChoiceError(f"outputs={key!r}: no such key; the function returns keys "
                                     f"{', '.join(map(repr, out))}")
        return out[key]
    if not isinstance(key, int) or not -len(out) <= key < len(out):
        raise _OutputChoiceError(f"outputs={key!r}: the function returns {len(out)} outputs (indices 0 to "
                                 f"{len(out) - 1})")
    return out[key]


def _selector(outputs) -> Callable[[Any], Any] | None:
    """``outputs``: a function of the output pytree, an index/key, or a sequence of them."""
    if outputs is None or callable(outputs):
        return outputs
    if isinstance(outputs, int | str):
        return lambda out: _pick(out, outputs)
    if isinstance(outputs, Sequence):
        keys = list(outputs)
        return lambda out: tuple(_pick(out, k) for k in keys)
    raise ConversionError(f"outputs must be a function, an index/key or a list of them, got {outputs!r}")


def convert(fn: Callable, *example_args, passes: str | Sequence[str] | None = None,
            outputs=None, quantize: str | None = None, calibration=None, per_channel: bool = True,
            skip: Sequence[str] | None = None, calibration_method: str = "max",
            print_ir_after_all: bool = False, print_ir_after: str | Sequence[str] | None = None,
            print_stats: bool = False, dynamic_batch: bool = False) -> Model:
    """Trace ``fn(*example_args)`` and optimize it into a Model.

    * ``example_args``: pytrees of arrays (or ``jax.ShapeDtypeStruct``, whose shapes may be
      symbolic: ``export.symbolic_shape("b, 64")``); only shapes and dtypes matter. Arrays
      ``fn`` closes over become the model's weights.
    * ``dynamic_batch``: axis 0 of every input of rank >= 1 becomes one symbolic batch
      dimension ``b``; the model then runs at any batch size.
    * ``passes``: pipeline string or list of pass names; None runs
      ``jaxlite.passes.DEFAULT_PIPELINE``, ``""``/``[]`` runs none.
    * ``outputs``: keep only part of ``fn``'s output: a function of it (``lambda o: o[0]``),
      an index or key, or a list of them. What only the dropped outputs needed is pruned.
    * ``quantize``: None, "float16", "bfloat16", "int8-weights", "dynamic" or "int8" (the last needs
      ``calibration``: an iterable of example-argument tuples). ``per_channel`` scales
      along output channels; ``skip``: weight-name / op-name patterns kept in float;
      ``calibration_method``: "max" or "percentile" (99.99th of |x|).
    * ``print_ir_after_all`` / ``print_ir_after=NAME``: print the IR after passes (stderr
      gets a one-line statistic per pass with ``print_stats``).
    """
    pass_list = pipeline.parse(pipeline.DEFAULT_PIPELINE if passes is None else passes)
    select = _selector(outputs)
    traced_fn = fn if select is None else (lambda *a: select(fn(*a)))
    if dynamic_batch:
        example_args = with_dynamic_batch(example_args)
    try:
        traced = trace(traced_fn, example_args, names_from=fn)
    except ConversionError as e:
        if isinstance(e.__cause__, _OutputChoiceError):
            raise ConversionError(str(e.__cause__)) from None
        raise
    try:
        verify_module(traced.module)
    except VerifyException as e:
        raise ConversionError(f"the traced IR does not verify: {e}") from None
    except (TypeError, ValueError) as e:  # a symbolic dimension beyond what the IR keeps (dims.py limits)
        raise ConversionError(f"the traced IR cannot keep a symbolic dimension: {e}") from None
    model = Model(traced.module, traced.weights, traced.signature)
    model.record("trace", print_module(traced.module))
    printing = dict(print_ir_after_all=print_ir_after_all, print_ir_after=print_ir_after, print_stats=print_stats)
    wanted = {print_ir_after} if isinstance(print_ir_after, str) else set(print_ir_after or ())
    if print_ir_after_all or "trace" in wanted:
        print_ir_after_step("trace", model.ir())
    model.run_passes(pass_list, **printing)
    if quantize is None:
        if calibration is not None:
            raise ConversionError("calibration data is only used with quantize='int8'")
        return model
    if quantize not in MODES:
        raise ConversionError(f"unknown quantize mode {quantize!r}; use one of {', '.join(MODES)}")
    if quantize == "int8" and calibration is None:
        raise ConversionError("quantize='int8' needs calibration data: calibration=[(x1,), (x2,), ...]")
    if quantize != "int8" and calibration is not None:
        raise ConversionError(f"calibration data is only used with quantize='int8', not {quantize!r}")
    if isinstance(skip, str):  # one pattern, not its characters
        skip = (skip,)
    skip = tuple(skip or ())
    if not all(isinstance(p, str) for p in skip):
        raise ConversionError(f"skip must be a pattern or a list of patterns (strings), got {skip!r}")
    model.run_passes([QuantizePass(mode=quantize, per_channel=per_channel, skip=skip), *pipeline.parse("cse,dce")],
                     calibration=calibration, calibration_method=calibration_method, **printing)
    model.metadata["quantization"] = {"mode": quantize, "per_channel": per_channel, "skip": list(skip),
                                      "calibration_method": calibration_method if quantize == "int8" else None}
    return model
