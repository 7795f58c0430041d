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

import dataclasses
from collections.abc import Mapping

from jaxlite.compiler import tflite_matmul  # noqa: F401  (registers the dot and convolution handlers)
from jaxlite.compiler.tflite_ops import Exporter
from jaxlite.dialects import dims as dimensions
from jaxlite.errors import ExportError


def export_tflite(model, description: str = "jaxlite", dims: Mapping[str, int] | None = None) -> bytes:
    """The model as .tflite bytes (ExportError for what TFLite cannot express). A model with
    symbolic dimensions is exported at the sizes ``dims`` gives them (``{"b": 1}``)."""
    if dimensions.has_symbolic_types(model.module):
        model = _specialized(model, dims)
    elif dims:
        raise ExportError(f"dims={dict(dims)} given, but this model has no symbolic dimensions")
    return Exporter(model).run(description)


def _specialized(model, values: Mapping[str, int] | None):
    sig = model.signature
    names = sig.symbols()
    if not values or set(values) != set(names):
        raise ExportError(f"a .tflite file has static shapes: give every symbolic dimension of this model a "
                          f"size ({', '.join(names)}), e.g. dims={{{', '.join(f'{n!r}: 1' for n in names)}}} "
                          f"(jaxlite export --dim {names[0]}=1){'; got ' + str(dict(values)) if values else ''}")
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values.values()):
        raise ExportError(f"dimension sizes must be positive integers, got {dict(values)}")
    shapes = [s.shape for s in sig.inputs]
    try:
        actual = [tuple(dimensions.evaluate(d, values) for d in shape) for shape in shapes]
        env = dimensions.solve(shapes, actual, [s.name for s in sig.inputs])
    except ValueError as e:
        raise ExportError(f"cannot export at {dict(values)}: {e}") from None
    return dataclasses.replace(model, module=dimensions.specialize(model.module, env),
                               signature=sig.specialized(env))
