"""The bar to beat, where installed (``pip install -e ".[bench]"``): LiteRT (TFLite's
runtime, XNNPACK) on the same JAX function, converted the way Google documents for JAX --
jax2tf, then the TFLite converter -- and ONNX Runtime on jax2onnx's export, each in float32,
dynamic-range int8 and full-integer int8 (calibrated on the same data as jaxlite's ``int8``).

Each runner is ``run(*args) -> output`` so it times alongside jax.jit in the same
interleaved loop; the .tflite bytes come with it for the size column.
"""

from __future__ import annotations

import os


def _shortened(message: str) -> str:
    """The first line of an error, its start and end where long (the cause is often last)."""
    line = message.splitlines()[0] if message else ""
    return line if len(line) <= 200 else f"{line[:60]} ... {line[-130:]}"


def tflite_converter(fn, args: tuple, calibration: list[tuple], mode: str) -> bytes:
    """The .tflite file TFLiteConverter makes of ``fn`` through jax2tf, as Google documents for
    JAX: float32 without optimizations; float16 = Optimize.DEFAULT with float16 weights;
    dynamic = Optimize.DEFAULT without data; int8 = calibrated on ``calibration``,
    TFLITE_BUILTINS_INT8 (float input/output). Needs tensorflow (ImportError otherwise)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    from jax.experimental import jax2tf

    args = [np.asarray(a) for a in args]
    tf_fn = tf.function(jax2tf.convert(fn, with_gradient=False), autograph=False,
                        input_signature=[tf.TensorSpec(a.shape, a.dtype) for a in args])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([tf_fn.get_concrete_function()], tf_fn)
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        converter.representative_dataset = lambda: ([np.asarray(a) for a in batch] for batch in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def litert_runner(blob: bytes, threads: str):
    """``run(*xs) -> first output`` of a .tflite file in LiteRT's interpreter (XNNPACK), with
    one thread or all cores."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

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


def litert_runners(fn, args: tuple, calibration: list[tuple], threads: str) -> dict[str, tuple]:
    """{"LiteRT float32" | "LiteRT dynamic" | "LiteRT int8": (run, file bytes)}, where a
    conversion or LiteRT's own setup fails: (None, the error); {} when tensorflow or
    ai-edge-litert is missing."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError:
        return {}
    out = {}
    for mode in ("float32", "dynamic", "int8"):
        try:
            blob = tflite_converter(fn, args, calibration, mode)
            out[f"LiteRT {mode}"] = (litert_runner(blob, threads), len(blob))
        except Exception as e:  # e.g. "failed to create XNNPACK runtime" (ResNet-18 full-integer)
            out[f"LiteRT {mode}"] = (None, f"{type(e).__name__}: {_shortened(str(e))}")
    return out


def onnxruntime_runners(fn, args: tuple, calibration: list[tuple], threads: str) -> dict[str, tuple]:
    """{"ORT float32" | "ORT dynamic" | "ORT int8": (run, file bytes)} as ONNX models are
    usually made: jax2onnx, then onnxruntime.quantization -- dynamic with int8 weights, static
    in QDQ format (int8 activations and weights, per channel, MinMax on the calibration set).
    Failures as in :func:`litert_runners`; {} when onnxruntime or jax2onnx is missing."""
    try:
        import numpy as np
        import onnxruntime as ort
        from jax2onnx import to_onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        return {}
    import tempfile

    tmp = tempfile.mkdtemp()
    float_path = os.path.join(tmp, "float32.onnx")

    def session(path: str):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1 if threads == "1" else os.cpu_count()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        output = sess.get_outputs()[0].name

        def run(*xs):
            return sess.run([output], {n: np.asarray(x) for n, x in zip(names, xs, strict=True)})[0]
        return run

    class Reader(CalibrationDataReader):
        def __init__(self, names):
            self.batches = iter([{n: np.asarray(x) for n, x in zip(names, batch, strict=True)}
                                 for batch in calibration])

        def get_next(self):
            return next(self.batches, None)

    def make(mode: str) -> str:
        if mode == "float32":
            to_onnx(fn, [np.asarray(a) for a in args], return_mode="file", output_path=float_path)
            return float_path
        path = os.path.join(tmp, f"{mode}.onnx")
        if mode == "dynamic":
            quantize_dynamic(float_path, path, weight_type=QuantType.QInt8)
            return path
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(float_path, prepared)
        names = [i.name for i in ort.InferenceSession(float_path, providers=["CPUExecutionProvider"]).get_inputs()]
        quantize_static(prepared, path, Reader(names), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
        return path

    out = {}
    for mode in ("float32", "dynamic", "int8"):
        try:
            path = make(mode)
            out[f"ORT {mode}"] = (session(path), os.path.getsize(path))
        except Exception as e:
            out[f"ORT {mode}"] = (None, f"{type(e).__name__}: {_shortened(str(e))}")
            if mode == "float32":
                break
    return out
