"""A jaxlite Model as a .tflite file that LiteRT's default op resolver runs (no TensorFlow).

Each op of the main function becomes TFLite builtins (``tflite_ops``: element-wise, layout,
reductions, pooling, LayerNorm decomposed; ``tflite_matmul``: FULLY_CONNECTED / CONV_2D /
DEPTHWISE_CONV_2D / BATCH_MATMUL with bias and ReLU fused). Quantized models keep jaxlite's
arithmetic: float16 weights stay float16 behind DEQUANTIZE (TFLite's float16 format),
``int8-weights`` keeps int8 weights behind DEQUANTIZE, ``dynamic`` dots and convolutions are
TFLite's dynamic-range kernels, and ``int8`` has int8 tensors exactly where jaxlite computes
on int8 codes, float elsewhere. ``bfloat16`` weights are written as float32 (TFLite's kernels
take no bfloat16). An op TFLite cannot express is an ExportError naming it.
"""

from __future__ import annotations

from jaxlite.compiler import tflite_matmul  # noqa: F401  (registers the dot and convolution handlers)
from jaxlite.compiler.tflite_ops import Exporter
from jaxlite.dialects.dims import has_symbolic_types
from jaxlite.errors import ExportError


def export_tflite(model, description: str = "jaxlite") -> bytes:
    """The model as .tflite bytes (ExportError for what TFLite cannot express)."""
    if has_symbolic_types(model.module):
        raise ExportError("export needs static shapes: this model has symbolic dimensions "
                          f"({', '.join(model.signature.symbols())}); convert it with concrete example "
                          "inputs (without dynamic_batch) to export it")
    return Exporter(model).run(description)
