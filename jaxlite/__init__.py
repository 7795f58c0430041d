"""jaxlite: the TFLite converter for JAX.

    model = jaxlite.convert(fn, *example_args)   # trace into jaxlite IR
    exe = model.compile(device=None)             # callable like fn
    model.save("m.jlite"); jaxlite.load("m.jlite")
"""

from __future__ import annotations

from jaxlite._version import __version__
from jaxlite.compiler.convert import convert
from jaxlite.compiler.model import Model, load
from jaxlite.compiler.report import QuantizationReport, quantization_report
from jaxlite.errors import (
    ConversionError,
    DeviceError,
    JaxliteError,
    ModelFormatError,
    SignatureError,
    UnsupportedPrimitiveError,
)


def compile(fn, *example_args, device=None, **convert_options):
    """convert + compile in one step; the result's ``.model`` is the converted Model."""
    return convert(fn, *example_args, **convert_options).compile(device=device)


__all__ = [
    "convert", "compile", "load", "Model", "quantization_report", "QuantizationReport", "JaxliteError", "UnsupportedPrimitiveError",
    "ModelFormatError", "SignatureError", "DeviceError", "ConversionError", "__version__",
]
