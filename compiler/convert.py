"""convert(): trace a JAX function into a Model (later: run the pass pipeline, quantize)."""

from __future__ import annotations

from collections.abc import Callable

from jaxlite.compiler.context import print_module, verify_module
from jaxlite.compiler.frontend import trace
from jaxlite.compiler.model import Model


def convert(fn: Callable, *example_args) -> Model:
    """Trace ``fn(*example_args)`` and return the Model holding its IR and weights.

    ``example_args`` may be any pytrees of arrays; only their shapes and dtypes matter.
    Arrays the function closes over become the model's weights.
    """
    traced = trace(fn, example_args)
    verify_module(traced.module, "converted IR")
    model = Model(traced.module, traced.weights, traced.signature)
    model.ir_history.append(("trace", print_module(traced.module)))
    return model
