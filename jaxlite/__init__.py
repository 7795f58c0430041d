"""jaxlite: the TFLite converter for JAX.

    model = jaxlite.convert(fn, *example_args)   # trace into jaxlite IR
    exe = model.compile(device=None)             # callable like fn
    model.save("m.jlite"); jaxlite.load("m.jlite")

The API below comes from the compiler layer, imported on first use: importing ``jaxlite``
(or its errors, or the CLI to print ``--help``) does not start jax.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from jaxlite._version import __version__
from jaxlite.errors import (
    ConversionError,
    DeviceError,
    ExportError,
    JaxliteError,
    ModelFormatError,
    SaveError,
    SignatureError,
    UnsupportedPrimitiveError,
)

if TYPE_CHECKING:
    from jaxlite.compiler.convert import convert
    from jaxlite.compiler.model import Model, load
    from jaxlite.compiler.report import QuantizationReport, quantization_report

_API = {"convert": "jaxlite.compiler.convert", "Model": "jaxlite.compiler.model", "load": "jaxlite.compiler.model",
        "QuantizationReport": "jaxlite.compiler.report", "quantization_report": "jaxlite.compiler.report"}


def __getattr__(name: str):
    if name == "ray":  # jaxlite.ray.Predictor (Ray Data), imported on first use
        return importlib.import_module("jaxlite.ray")
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'jaxlite' has no attribute {name!r}")


def compile(fn, *example_args, device=None, **convert_options):
    """convert + compile in one step; the result's ``.model`` is the converted Model."""
    return __getattr__("convert")(fn, *example_args, **convert_options).compile(device=device)


__all__ = [
    "convert", "compile", "load", "Model", "quantization_report", "QuantizationReport", "JaxliteError", "UnsupportedPrimitiveError",
    "ModelFormatError", "SaveError", "ExportError", "SignatureError", "DeviceError", "ConversionError", "__version__",
]
