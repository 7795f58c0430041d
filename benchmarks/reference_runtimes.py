"""The bar to beat, where installed (``pip install -e ".[bench]"``): LiteRT (TFLite's
runtime, XNNPACK) on the same JAX function, converted the way Google documents for JAX --
jax2tf, then the TFLite converter -- in float32, dynamic-range int8 and full-integer int8
(calibrated on the same data as jaxlite's ``int8``).

Each runner is ``run(*args) -> output`` so it times alongside jax.jit in the same
interleaved loop; the .tflite bytes come with it for the size column.
"""

from __future__ import annotations

import os


def litert_runners(fn, args: tuple, calibration: list[tuple], threads: str) -> dict[str, tuple]:
    """{"LiteRT float32" | "LiteRT dynamic" | "LiteRT int8": (run, file bytes)}, where a
    conversion or LiteRT's own setup fails: (None, the error); {} when tensorflow or
    ai-edge-litert is missing."""
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import numpy as np
        import tensorflow as tf
        from ai_edge_litert.interpreter import Interpreter
        from jax.experimental import jax2tf
    except ImportError:
        return {}

    args = [np.asarray(a) for a in args]
    tf_fn = tf.function(jax2tf.convert(fn), autograph=False,
                        input_signature=[tf.TensorSpec(a.shape, a.dtype) for a in args])
    concrete = tf_fn.get_concrete_function()

    def convert(mode: str) -> bytes:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf_fn)
        if mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "int8":
            converter.representative_dataset = lambda: ([np.asarray(a) for a in batch] for batch in calibration)
        return converter.convert()

    def runner(blob: bytes):
        interpreter = Interpreter(model_content=blob, num_threads=1 if threads == "1" else os.cpu_count())
        interpreter.allocate_tensors()
        inputs = [d["index"] for d in interpreter.get_input_details()]
        output = interpreter.get_output_details()[0]["index"]

        def run(*xs):
            for index, x in zip(inputs, xs, strict=True):
                interpreter.set_tensor(index, np.asarray(x))
            interpreter.invoke()
            return interpreter.get_tensor(output)
        return run

    out = {}
    for mode in ("float32", "dynamic", "int8"):
        try:
            blob = convert(mode)
            out[f"LiteRT {mode}"] = (runner(blob), len(blob))
        except Exception as e:  # e.g. "failed to create XNNPACK runtime" (ResNet-18 full-integer)
            out[f"LiteRT {mode}"] = (None, f"{type(e).__name__}: {str(e).splitlines()[0][:100]}")
    return out
