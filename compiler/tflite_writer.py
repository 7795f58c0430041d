"""A TFLite flatbuffer under construction: tensors, constant buffers, operators and one
subgraph with its signature, serialized with the schema code of the ``tflite`` package (no
TensorFlow). ``tflite_export`` decides what goes in; this module only knows the file format."""

from __future__ import annotations

import hashlib
import importlib
import math
from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite

SCHEMA_VERSION = 3
# builtin codes above 127 are stored as this in the deprecated int8 field, the real code beside it
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127
_BUFFER_ALIGNMENT = 16
# the oldest version LiteRT's resolver registers, where it is not 1 (BROADCAST_TO's version 1
# was withdrawn); other builtins are written as version 1, which every resolver has
_MIN_VERSION = {tflite.BuiltinOperator.BROADCAST_TO: 2}
_FUSES_ACTIVATION = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions"}  # XNNPACK and mmap'd weights want aligned constant data

_BUILTIN_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
_TENSOR_TYPES = {
    "float32": tflite.TensorType.FLOAT32, "float16": tflite.TensorType.FLOAT16,
    "int32": tflite.TensorType.INT32, "uint8": tflite.TensorType.UINT8,
    "int64": tflite.TensorType.INT64, "bool": tflite.TensorType.BOOL,
    "int16": tflite.TensorType.INT16, "int8": tflite.TensorType.INT8,
    "float64": tflite.TensorType.FLOAT64, "uint32": tflite.TensorType.UINT32,
}


def tensor_type(dtype) -> int:
    """The schema's TensorType of a numpy dtype (KeyError: no TFLite type)."""
    return _TENSOR_TYPES[np.dtype(dtype).name]


def has_tensor_type(dtype) -> bool:
    return np.dtype(dtype).name in _TENSOR_TYPES


@dataclass(frozen=True)
class Quantization:
    """Affine quantization: real = scale * (q - zero_point), per tensor or along ``axis``."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    @staticmethod
    def symmetric(scale, axis: int = 0) -> Quantization:
        scale = np.asarray(scale, np.float32).reshape(-1)
        return Quantization(tuple(float(s) for s in scale), (0,) * scale.size, axis)


@dataclass
class _Tensor:
    shape: tuple[int, ...]
    dtype: np.dtype
    name: str
    buffer: int
    quantization: Quantization | None


@dataclass
class _Operator:
    opcode: int
    inputs: list[int]
    outputs: list[int]
    options: tuple[str, dict] | None


@dataclass
class TFLiteGraph:
    """One subgraph being built; ``to_bytes`` serializes the model."""

    tensors: list[_Tensor] = field(default_factory=list)
    buffers: list[bytes] = field(default_factory=lambda: [b""])  # buffer 0: "no data", by convention
    operators: list[_Operator] = field(default_factory=list)
    opcodes: list[int] = field(default_factory=list)
    _buffer_of_bytes: dict[tuple, int] = field(default_factory=dict)

    def tensor(self, shape, dtype, name: str, quantization: Quantization | None = None) -> int:
        """A tensor computed by an operator (or a graph input)."""
        self.tensors.append(_Tensor(tuple(int(d) for d in shape), np.dtype(dtype), name, 0, quantization))
        return len(self.tensors) - 1

    def constant(self, array: np.ndarray, name: str, quantization: Quantization | None = None) -> int:
        """A tensor holding ``array``; equal contents share one buffer."""
        array = np.asarray(array, order="C")  # (not ascontiguousarray: it makes a 0-d array 1-d)
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        key = (array.dtype.str, hashlib.sha256(data).digest())
        buffer = self._buffer_of_bytes.get(key)
        if buffer is None:
            self.buffers.append(data)
            buffer = self._buffer_of_bytes[key] = len(self.buffers) - 1
        self.tensors.append(_Tensor(array.shape, array.dtype, name, buffer, quantization))
        return len(self.tensors) - 1

    def shape(self, index: int) -> tuple[int, ...]:
        return self.tensors[index].shape

    def dtype(self, index: int) -> np.dtype:
        return self.tensors[index].dtype

    def quantization(self, index: int) -> Quantization | None:
        return self.tensors[index].quantization

    def operator(self, builtin: str, inputs: list[int], outputs: list[int],
                 options: tuple[str, dict] | None = None) -> None:
        """``builtin``: a BuiltinOperator name (``"FULLY_CONNECTED"``); ``options``: the options
        table's name and its fields in snake case (``("FullyConnectedOptions", {...})``);
        input -1 is an absent optional input."""
        self.operators.append(_Operator(self._opcode(builtin), list(inputs), list(outputs), options))

    def _opcode(self, builtin: str) -> int:
        code = getattr(tflite.BuiltinOperator, builtin)
        if code not in self.opcodes:
            self.opcodes.append(code)
        return self.opcodes.index(code)

    def fuse(self, outputs: list[int]) -> None:
        """Peephole fusions on the complete graph, as TFLiteConverter writes them: ADD / SUB /
        MUL followed by RELU or RELU6 is one op with the activation fused, SUM followed by a
        multiplication by 1/count is MEAN -- only where the first op's result has no other
        reader and is no output (so values shared across unrolled loops and branches stay)."""
        readers: dict[int, int] = {}
        for op in self.operators:
            for t in op.inputs:
                readers[t] = readers.get(t, 0) + 1
        keep = set(outputs)
        producer = {t: op for op in self.operators for t in op.outputs}
        fused = []
        for op in self.operators:
            name = _BUILTIN_NAMES[self.opcodes[op.opcode]]
            source = producer.get(op.inputs[0]) if op.inputs else None
            if source is None or readers.get(op.inputs[0]) != 1 or op.inputs[0] in keep:
                continue
            first = _BUILTIN_NAMES[self.opcodes[source.opcode]]
            if name in ("RELU", "RELU6") and first in _FUSES_ACTIVATION and not (
                    source.options and source.options[1].get("fused_activation_function")):
                activation = 1 if name == "RELU" else 3  # ActivationFunctionType
                source.options = (_FUSES_ACTIVATION[first], {"fused_activation_function": activation})
            elif name == "MUL" and first == "SUM" and self._is_reciprocal_count(op.inputs[1], source):
                source.opcode = self._opcode("MEAN")
            else:
                continue
            source.outputs = op.outputs
            fused.append(op)
        self.operators = [op for op in self.operators if all(op is not f for f in fused)]

    def _is_reciprocal_count(self, tensor: int, summed: _Operator) -> bool:
        """Whether ``tensor`` is the constant 1 / (elements each output of ``summed`` adds)."""
        t = self.tensors[tensor]
        axes_t = self.tensors[summed.inputs[1]]
        if not t.buffer or t.dtype != np.float32 or math.prod(t.shape) != 1 or not axes_t.buffer:
            return False
        value = np.frombuffer(self.buffers[t.buffer], np.float32)[0]
        axes = np.frombuffer(self.buffers[axes_t.buffer], np.int32)
        shape = self.tensors[summed.inputs[0]].shape
        count = math.prod(shape[int(a)] for a in axes)
        return value == np.float32(1.0 / count)

    def to_bytes(self, inputs: list[tuple[str, int]], outputs: list[tuple[str, int]],
                 description: str) -> bytes:
        """The model file: ``inputs``/``outputs`` are (signature name, tensor index)."""
        b = flatbuffers.Builder(1024 + sum(len(d) for d in self.buffers))
        buffers = [_buffer(b, data) for data in self.buffers]
        tensors = [_tensor(b, t) for t in self.tensors]
        operators = [_operator(b, op) for op in self.operators]
        subgraph_name = b.CreateString("main")
        tensor_vector = _offsets(b, tflite.SubGraphStartTensorsVector, tensors)
        input_vector = _ints(b, tflite.SubGraphStartInputsVector, [i for _, i in inputs])
        output_vector = _ints(b, tflite.SubGraphStartOutputsVector, [i for _, i in outputs])
        operator_vector = _offsets(b, tflite.SubGraphStartOperatorsVector, operators)
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tensor_vector)
        tflite.SubGraphAddInputs(b, input_vector)
        tflite.SubGraphAddOutputs(b, output_vector)
        tflite.SubGraphAddOperators(b, operator_vector)
        tflite.SubGraphAddName(b, subgraph_name)
        subgraph = tflite.SubGraphEnd(b)

        codes = []
        for code in self.opcodes:
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, _PLACEHOLDER_FOR_GREATER_OP_CODES))
            tflite.OperatorCodeAddBuiltinCode(b, code)
            tflite.OperatorCodeAddVersion(b, _MIN_VERSION.get(code, 1))
            codes.append(tflite.OperatorCodeEnd(b))

        signature = _signature(b, inputs, outputs)
        text = b.CreateString(description)
        code_vector = _offsets(b, tflite.ModelStartOperatorCodesVector, codes)
        subgraph_vector = _offsets(b, tflite.ModelStartSubgraphsVector, [subgraph])
        buffer_vector = _offsets(b, tflite.ModelStartBuffersVector, buffers)
        signature_vector = _offsets(b, tflite.ModelStartSignatureDefsVector, [signature])
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, SCHEMA_VERSION)
        tflite.ModelAddOperatorCodes(b, code_vector)
        tflite.ModelAddSubgraphs(b, subgraph_vector)
        tflite.ModelAddDescription(b, text)
        tflite.ModelAddBuffers(b, buffer_vector)
        tflite.ModelAddSignatureDefs(b, signature_vector)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _offsets(b, start, offsets: list[int]) -> int:
    start(b, len(offsets))
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _ints(b, start, values) -> int:
    start(b, len(values))
    for v in reversed(list(values)):
        b.PrependInt32(int(v))
    return b.EndVector()


def _buffer(b, data: bytes) -> int:
    vector = None
    if data:
        b.StartVector(1, len(data), _BUFFER_ALIGNMENT)
        b.head -= len(data)
        b.Bytes[b.head:b.head + len(data)] = data
        b.vectorNumElems = len(data)
        vector = b.EndVector()
    tflite.BufferStart(b)
    if vector is not None:
        tflite.BufferAddData(b, vector)
    return tflite.BufferEnd(b)


def _tensor(b, t: _Tensor) -> int:
    name = b.CreateString(t.name)
    shape = _ints(b, tflite.TensorStartShapeVector, t.shape)
    quant = _quantization(b, t.quantization) if t.quantization is not None else None
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    tflite.TensorAddType(b, tensor_type(t.dtype))
    tflite.TensorAddBuffer(b, t.buffer)
    tflite.TensorAddName(b, name)
    if quant is not None:
        tflite.TensorAddQuantization(b, quant)
    return tflite.TensorEnd(b)


def _quantization(b, q: Quantization) -> int:
    scale = b.CreateNumpyVector(np.asarray(q.scale, np.float32))
    zero_point = b.CreateNumpyVector(np.asarray(q.zero_point, np.int64))
    tflite.QuantizationParametersStart(b)
    tflite.QuantizationParametersAddScale(b, scale)
    tflite.QuantizationParametersAddZeroPoint(b, zero_point)
    tflite.QuantizationParametersAddQuantizedDimension(b, q.axis)
    return tflite.QuantizationParametersEnd(b)


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _options(b, table: str, fields: dict) -> int:
    module = importlib.import_module(f"tflite.{table}")  # the generated module of that table
    getattr(module, f"{table}Start")(b)
    for key, value in fields.items():
        getattr(module, f"{table}Add{_camel(key)}")(b, value)
    return getattr(module, f"{table}End")(b)


def _operator(b, op: _Operator) -> int:
    options = _options(b, *op.options) if op.options is not None else None
    inputs = _ints(b, tflite.OperatorStartInputsVector, op.inputs)
    outputs = _ints(b, tflite.OperatorStartOutputsVector, op.outputs)
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, op.opcode)
    tflite.OperatorAddInputs(b, inputs)
    tflite.OperatorAddOutputs(b, outputs)
    if options is not None:
        tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, op.options[0]))
        tflite.OperatorAddBuiltinOptions(b, options)
    return tflite.OperatorEnd(b)


def _tensor_maps(b, start, entries: list[tuple[str, int]]) -> int:
    maps = []
    for name, index in entries:
        text = b.CreateString(name)
        tflite.TensorMapStart(b)
        tflite.TensorMapAddName(b, text)
        tflite.TensorMapAddTensorIndex(b, index)
        maps.append(tflite.TensorMapEnd(b))
    return _offsets(b, start, maps)


def _signature(b, inputs, outputs) -> int:
    ins = _tensor_maps(b, tflite.SignatureDefStartInputsVector, inputs)
    outs = _tensor_maps(b, tflite.SignatureDefStartOutputsVector, outputs)
    key = b.CreateString("serving_default")
    tflite.SignatureDefStart(b)
    tflite.SignatureDefAddInputs(b, ins)
    tflite.SignatureDefAddOutputs(b, outs)
    tflite.SignatureDefAddSignatureKey(b, key)
    tflite.SignatureDefAddSubgraphIndex(b, 0)
    return tflite.SignatureDefEnd(b)


def builtin_counts(data: bytes) -> dict[str, int]:
    """How many operators of each builtin a .tflite file's first subgraph holds (the file's own
    or TFLiteConverter's: for side-by-side op counts)."""
    model = tflite.Model.GetRootAsModel(data, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        codes.append(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()))
    counts: dict[str, int] = {}
    graph = model.Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        name = _BUILTIN_NAMES.get(codes[graph.Operators(i).OpcodeIndex()], "CUSTOM")
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
