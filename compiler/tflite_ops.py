"""The machinery of the .tflite export (``tflite_export``): IR values tracked as TFLite
tensors or not-yet-written constants, the op handlers by IR op name, and the handlers of
element-wise, layout, reduction, gather, pooling and row ops (dots and convolutions are in
``tflite_matmul``).

Values are tracked lazily: a constant stays a numpy array until an op needs it as a tensor
(so weight layout changes cost nothing at run time; a float16 weight is written as float16
behind DEQUANTIZE, an int8 one with its scales), and a broadcast stays unexpanded while only
element-wise ops (which broadcast in TFLite) read it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np
from xdsl.dialects import func
from xdsl.ir import Operation, SSAValue

from jaxlite.compiler.tflite_writer import Quantization, TFLiteGraph, has_tensor_type, tensor_type
from jaxlite.dialects import int8
from jaxlite.dialects.module import find_main
from jaxlite.dialects.primitive import PrimitiveOp
from jaxlite.dialects.types import shape_dtype
from jaxlite.errors import ExportError

# elements up to which an op on constants is evaluated at export time whatever it produces
_FOLD_ELEMENTS = 64
# TFLite's element-wise kernels broadcast operands up to this rank
_MAX_BROADCAST_RANK = 6
# element types whose arithmetic builtins in TFLite are quantized kernels, not integer math
_QUANTIZED_ONLY = (np.dtype(np.int8), np.dtype(np.uint8))
_ARITHMETIC = {"ADD", "SUB", "MUL", "DIV", "POW", "SQUARED_DIFFERENCE", "NEG", "ABS", "SQUARE"}


@dataclass
class Val:
    """An IR value in the file: a tensor, or a constant not yet written. A constant's array
    may be unexpanded (1s where ``full_shape`` is larger: a broadcast or a splat) and kept in
    its stored precision: float16 for a float32 value (written behind DEQUANTIZE), or int8
    codes with ``scale`` along ``scale_axis`` (-1: one scale) for a dequantized weight."""

    full_shape: tuple[int, ...]
    dtype: np.dtype
    tensor: int | None = None
    const: np.ndarray | None = None
    scale: np.ndarray | None = None
    scale_axis: int = -1

    def value(self) -> np.ndarray | None:
        """The constant as the IR sees it (expanded, in the IR's dtype), or None."""
        if self.const is None:
            return None
        c = self.const
        if self.scale is not None:
            c = int8.dequantize(c, self.scale, self.scale_axis)
        return np.broadcast_to(c.astype(self.dtype, copy=False), self.full_shape)


class Exporter:
    def __init__(self, model):
        self.model = model
        self.g = TFLiteGraph()
        self.vals: dict[SSAValue, Val] = {}
        self._names: dict[str, int] = {}

    # ---- values -------------------------------------------------------------------------

    def name(self, hint: str) -> str:
        n = self._names.get(hint, 0)
        self._names[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    def const(self, v: SSAValue) -> np.ndarray | None:
        """The constant value of ``v`` in the IR's dtype, possibly unexpanded (see Val), or None."""
        val = self.vals[v]
        if val.const is None:
            return None
        return val.value() if val.scale is not None else val.const.astype(val.dtype, copy=False)

    def full_const(self, v: SSAValue) -> np.ndarray | None:
        return self.vals[v].value()

    def shape_of(self, t: int) -> tuple[int, ...]:
        return self.g.shape(t)

    def operand(self, v: SSAValue) -> int:
        """A tensor for ``v`` whose shape broadcasts to v's (element-wise ops' operands)."""
        return self.tensor_of(self.vals[v])

    def tensor_of(self, val: Val) -> int:
        if val.tensor is None:
            val.tensor = self.stored_constant(val, self.name("const"))
        return val.tensor

    def stored_constant(self, val: Val, name: str) -> int:
        """A constant tensor of val's dtype: written as stored, then DEQUANTIZE'd (float16, int8)."""
        c = val.const
        if val.scale is not None:
            q = self.g.constant(c, name + "_q", Quantization.symmetric(val.scale, max(val.scale_axis, 0)))
            return self.emit("DEQUANTIZE", [q], c.shape, np.float32, hint=name)
        if c.dtype == np.float16 and val.dtype == np.float32:
            half = self.g.constant(c, name + "_f16")
            return self.emit("DEQUANTIZE", [half], c.shape, np.float32, hint=name)
        return self.g.constant(c.astype(val.dtype, copy=False), name)

    def full(self, v: SSAValue) -> int:
        """A tensor for ``v`` of exactly its IR shape."""
        return self.full_of(self.vals[v])

    def full_of(self, val: Val) -> int:
        t = self.tensor_of(val)
        if self.shape_of(t) != val.full_shape:
            if val.const is not None and val.scale is None and val.const.dtype == val.dtype:
                return self.g.constant(np.broadcast_to(val.const, val.full_shape), self.name("const"))
            shape_t = self.g.constant(np.asarray(val.full_shape, np.int32), self.name("shape"))
            t = self.emit("BROADCAST_TO", [t, shape_t], val.full_shape, val.dtype,
                          quant=self.g.quantization(t))
        return t

    def set_tensor(self, v: SSAValue, t: int) -> None:
        shape, dtype = shape_dtype(v.type)
        self.vals[v] = Val(tuple(shape), np.dtype(dtype), tensor=t)

    def set_const(self, v: SSAValue, array: np.ndarray) -> None:
        shape, dtype = shape_dtype(v.type)
        array = np.asarray(array).astype(dtype, copy=False)
        if array.shape != tuple(shape):  # a splat literal comes as one element
            array = array.reshape(shape) if array.size == math.prod(shape) else np.broadcast_to(array, shape)
        if array.size > 1 and array.ndim and np.all(array == array.reshape(-1)[0]):
            array = array.reshape(-1)[:1].reshape((1,) * array.ndim)  # a splat: one element, broadcast
        self.vals[v] = Val(tuple(shape), np.dtype(dtype), const=array)

    def emit(self, builtin: str, inputs: list[int], shape, dtype, options=None,
             quant: Quantization | None = None, hint: str | None = None) -> int:
        out = self.g.tensor(shape, dtype, self.name(hint or builtin.lower()), quant)
        self.g.operator(builtin, inputs, [out], options)
        return out

    def int_const(self, values, hint: str) -> int:
        return self.g.constant(np.asarray(values, np.int32), self.name(hint))

    def reshape(self, t: int, shape) -> int:
        shape = tuple(int(d) for d in shape)
        if self.shape_of(t) == shape:
            return t
        return self.emit("RESHAPE", [t, self.int_const(shape, "shape")], shape, self.g.dtype(t),
                         quant=self.g.quantization(t))

    def transpose(self, t: int, perm) -> int:
        perm = tuple(int(p) for p in perm)
        if perm == tuple(range(len(perm))):
            return t
        shape = tuple(self.shape_of(t)[p] for p in perm)
        return self.emit("TRANSPOSE", [t, self.int_const(perm, "perm")], shape, self.g.dtype(t),
                         quant=self.g.quantization(t))

    # ---- driver ---------------------------------------------------------------------------

    def run(self, description: str) -> bytes:
        main = find_main(self.model.module)
        block = main.body.blocks.first
        sig = self.model.signature
        inputs = []
        for arg, spec in zip(block.args, sig.inputs, strict=True):
            check_dtype(spec.dtype, f"input {spec.name}")
            t = self.g.tensor(spec.shape, spec.dtype, spec.name)
            self.set_tensor(arg, t)
            inputs.append((spec.name, t))
        outputs = []
        for op in block.ops:
            if isinstance(op, func.ReturnOp):
                for v, spec in zip(op.operands, sig.outputs, strict=True):
                    outputs.append((spec.name, self.output_tensor(v, spec.name)))
                break
            self.lower(op)
        self.g.fuse([t for _, t in outputs])
        return self.g.to_bytes(inputs, outputs, description)

    def output_tensor(self, v: SSAValue, name: str) -> int:
        t = self.full(v)
        if self.g.tensors[t].buffer or any(t == i for i in range(len(self.model.signature.inputs))):
            # a constant or an input as an output: TFLite wants outputs computed by an operator
            t = self.emit("RESHAPE", [t, self.int_const(self.shape_of(t), "shape")], self.shape_of(t),
                          self.g.dtype(t), quant=self.g.quantization(t))
        return t

    def lower(self, op: Operation) -> None:
        if op.name == "jlax.weight":
            self.set_const(op.results[0], self.model.weights[op.weight_name])
            return
        if op.name == "jlax.constant":
            self.set_const(op.results[0], op.to_array())
            return
        if self.try_fold(op):
            return
        handler = HANDLERS.get(op.name)
        if handler is None:
            raise ExportError(f"cannot export {op.name} to TFLite: no TFLite builtin computes it "
                              f"(jaxlite exports {len(HANDLERS)} kinds of op; README's 'Export to .tflite' "
                              "lists what TFLite lacks)")
        for r in op.results:
            check_dtype(shape_dtype(r.type)[1], op.name)
        handler(self, op)

    def try_fold(self, op: Operation) -> bool:
        """A jlax op on constants, evaluated now when it does not grow the constants."""
        if not isinstance(op, PrimitiveOp) or not op.name.startswith("jlax.") or op.regions:
            return False
        consts = [self.full_const(v) for v in op.operands]
        if any(c is None for c in consts):
            return False
        out_elements = sum(math.prod(shape_dtype(r.type)[0]) for r in op.results)
        if out_elements > max([_FOLD_ELEMENTS, *(c.size for c in consts)]):
            return False
        with jax.ensure_compile_time_eval():
            results = op.bind(*consts)
        for r, value in zip(op.results, results, strict=True):
            self.set_const(r, np.asarray(value))
        return True

    # ---- element-wise ---------------------------------------------------------------------

    def same_quantization(self, tensors: list[int]) -> list[int]:
        """int8 tensors of jaxlite codes of one scale s, quantized alike (LiteRT's multi-input
        int8 ops want equal parameters): as they are when they already agree, else each
        requantized to (s, zero point 0) -- a ReLU output's (127 s / 255, -128) too; constants
        without parameters (a code max's zero) take (s, 0)."""
        quants = [self.g.quantization(t) for t in tensors]
        known = [q for q in quants if q is not None]
        if not known or (len(known) == len(quants) and all(q == known[0] for q in known)):
            return tensors
        scale = known[0].scale[0] * (127 - known[0].zero_point[0]) / 127
        codes = Quantization.symmetric([scale])
        out = []
        for t, q in zip(tensors, quants, strict=True):
            if q is None and self.g.tensors[t].buffer:  # a constant code: give it the common parameters
                t = self.g.constant(np.frombuffer(self.g.buffers[self.g.tensors[t].buffer], np.int8)
                                    .reshape(self.shape_of(t)), self.name("codes"), codes)
            elif q is None:
                raise ExportError("an int8 tensor without quantization parameters met quantized ones")
            elif q != codes:
                t = self.emit("QUANTIZE", [t], self.shape_of(t), np.int8, quant=codes, hint="requantized")
            out.append(t)
        return out

    def elementwise(self, op: Operation, builtin: str, options=None, operands=None) -> None:
        operands = list(op.operands if operands is None else operands)
        out_shape, out_dtype = shape_dtype(op.results[0].type)
        if np.dtype(out_dtype) in _QUANTIZED_ONLY and builtin in _ARITHMETIC:
            raise ExportError(f"cannot export {op.name} on {np.dtype(out_dtype).name} tensors to TFLite: its "
                              f"{builtin} on that type is a quantized kernel (int8 arithmetic wraps in jax)")
        rank = len(out_shape)
        if rank > _MAX_BROADCAST_RANK:
            ins = [self.full(v) for v in operands]
        else:
            ins = [self.operand(v) for v in operands]
        shape = np.broadcast_shapes(*(self.shape_of(t) for t in ins)) if ins else tuple(out_shape)
        t = self.emit(builtin, ins, shape, out_dtype, options)
        r = op.results[0]
        self.vals[r] = Val(tuple(out_shape), np.dtype(out_dtype), tensor=t)

    def activation(self, t: int, activation: str) -> int:
        """``activation`` applied to tensor t as separate builtins."""
        if activation == "none":
            return t
        shape, dtype = self.shape_of(t), self.g.dtype(t)
        if activation in ("relu", "relu6"):
            return self.emit(activation.upper(), [t], shape, dtype)
        if activation == "sigmoid":
            return self.emit("LOGISTIC", [t], shape, dtype)
        if activation == "tanh":
            return self.emit("TANH", [t], shape, dtype)
        if activation == "silu":
            s = self.emit("LOGISTIC", [t], shape, dtype)
            return self.emit("MUL", [t, s], shape, dtype, ("MulOptions", {}))
        if activation in ("gelu_tanh", "gelu_erf"):
            return self.emit("GELU", [t], shape, dtype, ("GeluOptions", {"approximate": activation == "gelu_tanh"}))
        raise ExportError(f"cannot export activation {activation!r} to TFLite")


def check_dtype(dtype, where: str) -> None:
    if not has_tensor_type(dtype):
        raise ExportError(f"cannot export {where}: TFLite has no {np.dtype(dtype).name} tensors")


HANDLERS: dict[str, Callable[[Exporter, Operation], None]] = {}


def handles(*names: str):
    def register(fn):
        for n in names:
            HANDLERS[n] = fn
        return fn
    return register


_BINARY = {"add": ("ADD", "AddOptions"), "sub": ("SUB", "SubOptions"), "mul": ("MUL", "MulOptions"),
           "max": ("MAXIMUM", None), "min": ("MINIMUM", None), "pow": ("POW", None),
           "atan2": ("ATAN2", None), "eq": ("EQUAL", None), "ne": ("NOT_EQUAL", None),
           "lt": ("LESS", None), "le": ("LESS_EQUAL", None), "gt": ("GREATER", None),
           "ge": ("GREATER_EQUAL", None)}
_UNARY = {"neg": "NEG", "exp": "EXP", "log": "LOG", "tanh": "TANH", "logistic": "LOGISTIC", "sqrt": "SQRT",
          "rsqrt": "RSQRT", "abs": "ABS", "sin": "SIN", "cos": "COS", "floor": "FLOOR", "ceil": "CEIL",
          "sign": "SIGN", "square": "SQUARE"}


def _binary(builtin: str, options_table: str | None):
    def lower(ex: Exporter, op: Operation) -> None:
        if builtin == "MAXIMUM" and _is_zero_relu(ex, op):  # RELU (fused into its producer afterwards)
            t = ex.operand(next(v for v in op.operands if ex.const(v) is None))
            shape, dtype = shape_dtype(op.results[0].type)
            ex.vals[op.results[0]] = Val(tuple(shape), np.dtype(dtype),
                                         tensor=ex.emit("RELU", [t], ex.shape_of(t), ex.g.dtype(t)))
            return
        ex.elementwise(op, builtin, (options_table, {}) if options_table else None)
    return lower


def _is_zero_relu(ex: Exporter, op: Operation) -> bool:
    consts = [ex.const(v) for v in op.operands]
    return (shape_dtype(op.results[0].type)[1].kind == "f" and sum(c is not None for c in consts) == 1
            and next(c for c in consts if c is not None).size == 1
            and float(next(c for c in consts if c is not None).reshape(-1)[0]) == 0.0)


for _name, (_builtin, _options) in _BINARY.items():
    HANDLERS[f"jlax.{_name}"] = _binary(_builtin, _options)
for _name, _builtin in _UNARY.items():
    HANDLERS[f"jlax.{_name}"] = (lambda b: lambda ex, op: ex.elementwise(op, b))(_builtin)


@handles("jlax.div")
def _div(ex: Exporter, op: Operation) -> None:
    dtype = shape_dtype(op.results[0].type)[1]
    if dtype == np.int32:  # TFLite's int32 DIV truncates toward zero, as lax.div does
        ex.elementwise(op, "DIV", ("DivOptions", {}))
        return
    if dtype.kind != "f":
        raise ExportError(f"cannot export a {dtype.name} jlax.div to TFLite (float and int32 only)")
    x, d = op.operands
    divisor = ex.const(d)
    if divisor is not None:
        with np.errstate(divide="ignore", over="ignore"):
            inverse = (1 / divisor.astype(np.float64)).astype(divisor.dtype)
    if divisor is not None and np.all(np.isfinite(inverse)):
        # x / c as x * (1/c), as TFLiteConverter writes it (MUL is XNNPACK's cheaper kernel; the
        # reciprocal rounds once, exactly for powers of two such as attention's 1/sqrt(64));
        # a SUM times 1/count becomes MEAN once the graph is complete (TFLiteGraph.fuse)
        reciprocal = ex.g.constant(inverse, ex.name("reciprocal"))
        out_shape, dtype = shape_dtype(op.results[0].type)
        xt = ex.operand(x) if len(out_shape) <= _MAX_BROADCAST_RANK else ex.full(x)
        shape = np.broadcast_shapes(ex.shape_of(xt), divisor.shape)
        t = ex.emit("MUL", [xt, reciprocal], shape, dtype, ("MulOptions", {}))
        ex.vals[op.results[0]] = Val(tuple(out_shape), np.dtype(dtype), tensor=t)
        return
    ex.elementwise(op, "DIV", ("DivOptions", {}))


@handles("jlax.and", "jlax.or", "jlax.not", "jlax.xor")
def _logical(ex: Exporter, op: Operation) -> None:
    if shape_dtype(op.results[0].type)[1] != np.bool_:
        raise ExportError(f"cannot export bitwise {op.name} on integers to TFLite (only on booleans)")
    builtin = {"jlax.and": "LOGICAL_AND", "jlax.or": "LOGICAL_OR", "jlax.not": "LOGICAL_NOT",
               "jlax.xor": "NOT_EQUAL"}[op.name]
    ex.elementwise(op, builtin)


@handles("jlax.integer_pow")
def _integer_pow(ex: Exporter, op: Operation) -> None:
    y = op.params()["y"]
    x = ex.operand(op.operands[0])
    shape, dtype = ex.shape_of(x), ex.g.dtype(x)
    if y == 0:
        ex.set_const(op.results[0], np.ones(shape_dtype(op.results[0].type)[0], dtype))
        return
    result, base, n = None, x, abs(y)
    while n:  # square-and-multiply
        if n & 1:
            result = base if result is None else ex.emit("MUL", [result, base], shape, dtype, ("MulOptions", {}))
        n >>= 1
        if n:
            base = ex.emit("MUL", [base, base], shape, dtype, ("MulOptions", {}))
    if y < 0:
        one = ex.g.constant(np.ones((), dtype), ex.name("one"))
        result = ex.emit("DIV", [one, result], shape, dtype, ("DivOptions", {}))
    ex.vals[op.results[0]] = Val(tuple(shape_dtype(op.results[0].type)[0]), np.dtype(dtype), tensor=result)


@handles("jlax.exp2", "jlax.log1p", "jlax.expm1")
def _exp_log_variants(ex: Exporter, op: Operation) -> None:
    x = ex.operand(op.operands[0])
    shape, dtype = ex.shape_of(x), ex.g.dtype(x)
    if op.name == "jlax.exp2":
        two = ex.g.constant(np.full((), 2, dtype), ex.name("two"))
        t = ex.emit("POW", [two, x], shape, dtype)
    elif op.name == "jlax.log1p":
        one = ex.g.constant(np.ones((), dtype), ex.name("one"))
        t = ex.emit("LOG", [ex.emit("ADD", [x, one], shape, dtype, ("AddOptions", {}))], shape, dtype)
    else:
        one = ex.g.constant(np.ones((), dtype), ex.name("one"))
        t = ex.emit("SUB", [ex.emit("EXP", [x], shape, dtype), one], shape, dtype, ("SubOptions", {}))
    ex.vals[op.results[0]] = Val(tuple(shape_dtype(op.results[0].type)[0]), np.dtype(dtype), tensor=t)


@handles("jlax.select_n")
def _select_n(ex: Exporter, op: Operation) -> None:
    pred, *cases = op.operands
    if len(cases) != 2 or shape_dtype(pred.type)[1] != np.bool_:
        raise ExportError("cannot export jlax.select_n with an integer selector or more than two cases to TFLite")
    ex.elementwise(op, "SELECT_V2", operands=[pred, cases[1], cases[0]])


@handles("jlax.clamp")
def _clamp(ex: Exporter, op: Operation) -> None:
    lo, x, hi = op.operands
    out_shape, dtype = shape_dtype(op.results[0].type)
    lo_c, hi_c = ex.const(lo), ex.const(hi)
    t = ex.operand(x)
    if (lo_c is not None and hi_c is not None and lo_c.size == 1 and hi_c.size == 1
            and float(lo_c.reshape(-1)[0]) == 0 and float(hi_c.reshape(-1)[0]) == 6 and dtype.kind == "f"):
        t = ex.emit("RELU6", [t], ex.shape_of(t), dtype)
    else:
        lo_t, hi_t = ex.operand(lo), ex.operand(hi)
        shape = np.broadcast_shapes(ex.shape_of(t), ex.shape_of(lo_t))
        t = ex.emit("MAXIMUM", [t, lo_t], shape, dtype)
        t = ex.emit("MINIMUM", [t, hi_t], np.broadcast_shapes(shape, ex.shape_of(hi_t)), dtype)
    ex.vals[op.results[0]] = Val(tuple(out_shape), np.dtype(dtype), tensor=t)


@handles("jlax.convert_element_type")
def _convert(ex: Exporter, op: Operation) -> None:
    x = op.operands[0]
    if shape_dtype(x.type)[1] == shape_dtype(op.results[0].type)[1]:
        ex.vals[op.results[0]] = ex.vals[x]
        return
    ex.elementwise(op, "CAST")


@handles("jlax.copy", "jlax.copy_p", "jlax.stop_gradient", "jlax.optimization_barrier")
def _identity(ex: Exporter, op: Operation) -> None:
    for v, r in zip(op.operands, op.results, strict=True):
        ex.vals[r] = ex.vals[v]


# ---- shapes and layouts ----------------------------------------------------------------------


@handles("jlax.broadcast_in_dim")
def _broadcast_in_dim(ex: Exporter, op: Operation) -> None:
    p = op.params()
    v = op.operands[0]
    out_shape, dtype = shape_dtype(op.results[0].type)
    dims = tuple(p["broadcast_dimensions"])
    order = tuple(sorted(range(len(dims)), key=lambda i: dims[i]))
    expanded = [1] * len(out_shape)
    src_shape = shape_dtype(v.type)[0]
    for i, d in enumerate(dims):
        expanded[d] = src_shape[i]
    c = ex.full_const(v)
    if c is not None:
        ex.vals[op.results[0]] = Val(tuple(out_shape), np.dtype(dtype),
                                     const=np.transpose(c, order).reshape(expanded))
        return
    t = ex.transpose(ex.full(v), order)
    t = ex.reshape(t, expanded)
    ex.vals[op.results[0]] = Val(tuple(out_shape), np.dtype(dtype), tensor=t)


@handles("jlax.reshape", "jlax.squeeze", "jlax.expand_dims")
def _reshape(ex: Exporter, op: Operation) -> None:
    if op.name == "jlax.reshape" and op.params().get("dimensions") is not None:
        raise ExportError("cannot export jlax.reshape with a dimensions permutation")
    shape = shape_dtype(op.results[0].type)[0]
    c = ex.full_const(op.operands[0])
    if c is not None:
        ex.set_const(op.results[0], c.reshape(shape))
        return
    ex.set_tensor(op.results[0], ex.reshape(ex.full(op.operands[0]), shape))


@handles("jlax.transpose")
def _transpose(ex: Exporter, op: Operation) -> None:
    perm = op.params()["permutation"]
    c = ex.full_const(op.operands[0])
    if c is not None:
        ex.set_const(op.results[0], np.transpose(c, perm))
        return
    ex.set_tensor(op.results[0], ex.transpose(ex.full(op.operands[0]), perm))


@handles("jlax.concatenate")
def _concatenate(ex: Exporter, op: Operation) -> None:
    axis = op.params()["dimension"]
    shape, dtype = shape_dtype(op.results[0].type)
    ins = ex.same_quantization([ex.full(v) for v in op.operands])
    ex.set_tensor(op.results[0], ex.emit("CONCATENATION", ins, shape, dtype,
                                         ("ConcatenationOptions", {"axis": axis}),
                                         quant=ex.g.quantization(ins[0])))


@handles("jlax.slice")
def _slice(ex: Exporter, op: Operation) -> None:
    p = op.params()
    shape, dtype = shape_dtype(op.results[0].type)
    x = ex.full(op.operands[0])
    start, limit, strides = p["start_indices"], p["limit_indices"], p["strides"]
    quant = ex.g.quantization(x)
    if strides is None or all(s == 1 for s in strides):
        sizes = [hi - lo for lo, hi in zip(start, limit, strict=True)]
        t = ex.emit("SLICE", [x, ex.int_const(start, "begin"), ex.int_const(sizes, "size")], shape, dtype,
                    quant=quant)
    else:
        t = ex.emit("STRIDED_SLICE", [x, ex.int_const(start, "begin"), ex.int_const(limit, "end"),
                                      ex.int_const(strides, "strides")], shape, dtype,
                    ("StridedSliceOptions", {}), quant=quant)
    ex.set_tensor(op.results[0], t)


@handles("jlax.dynamic_slice")
def _dynamic_slice(ex: Exporter, op: Operation) -> None:
    x, *starts = op.operands
    consts = [ex.full_const(s) for s in starts]
    if any(c is None for c in consts):
        raise ExportError("cannot export jlax.dynamic_slice with computed start indices to TFLite")
    in_shape = shape_dtype(x.type)[0]
    shape, dtype = shape_dtype(op.results[0].type)
    begin = [int(np.clip(int(c), 0, n - s)) for c, n, s in zip(consts, in_shape, shape, strict=True)]  # jax clamps
    t = ex.full(x)
    ex.set_tensor(op.results[0], ex.emit("SLICE", [t, ex.int_const(begin, "begin"), ex.int_const(shape, "size")],
                                         shape, dtype, quant=ex.g.quantization(t)))


@handles("jlax.pad")
def _pad(ex: Exporter, op: Operation) -> None:
    config = op.params()["padding_config"]
    if any(lo < 0 or hi < 0 or interior for lo, hi, interior in config):
        raise ExportError("cannot export jlax.pad with negative or interior padding to TFLite")
    value = ex.full_const(op.operands[1])
    if value is None:
        raise ExportError("cannot export jlax.pad with a computed padding value to TFLite")
    shape, dtype = shape_dtype(op.results[0].type)
    x = ex.full(op.operands[0])
    paddings = ex.int_const([[lo, hi] for lo, hi, _ in config], "paddings")
    q = ex.g.quantization(x)
    if q is not None:  # a jaxlite code (of scale s), re-expressed in the tensor's own parameters
        s_codes = q.scale[0] * (127 - q.zero_point[0]) / 127
        value = np.clip(np.round(value.astype(np.float64) * s_codes / q.scale[0]) + q.zero_point[0], -128, 127)
    value_t = ex.g.constant(np.asarray(value, dtype).reshape(()), ex.name("pad_value"), q)
    ex.set_tensor(op.results[0], ex.emit("PADV2", [x, paddings, value_t], shape, dtype, quant=q))


@handles("jlax.rev")
def _rev(ex: Exporter, op: Operation) -> None:
    """One REVERSE_V2 per axis (LiteRT's takes only contiguous axes in one op)."""
    shape, dtype = shape_dtype(op.results[0].type)
    t = ex.full(op.operands[0])
    for axis in op.params()["dimensions"]:
        t = ex.emit("REVERSE_V2", [t, ex.int_const([axis], "axis")], shape, dtype, quant=ex.g.quantization(t))
    ex.set_tensor(op.results[0], t)


@handles("jlax.iota")
def _iota(ex: Exporter, op: Operation) -> None:
    with jax.ensure_compile_time_eval():
        ex.set_const(op.results[0], np.asarray(op.bind()[0]))


# ---- reductions ------------------------------------------------------------------------------

_REDUCERS = {"jlax.reduce_sum": "SUM", "jlax.reduce_max": "REDUCE_MAX", "jlax.reduce_min": "REDUCE_MIN",
             "jlax.reduce_prod": "REDUCE_PROD", "jlax.reduce_or": "REDUCE_ANY", "jlax.reduce_and": "REDUCE_ALL"}


@handles(*_REDUCERS)
def _reduce(ex: Exporter, op: Operation) -> None:
    shape, dtype = shape_dtype(op.results[0].type)
    axes = ex.int_const(op.params()["axes"], "axes")
    t = ex.emit(_REDUCERS[op.name], [ex.full(op.operands[0]), axes], shape, dtype,
                ("ReducerOptions", {"keep_dims": False}))
    ex.set_tensor(op.results[0], t)


@handles("jlax.argmax", "jlax.argmin")
def _argmax(ex: Exporter, op: Operation) -> None:
    p = op.params()
    if len(p["axes"]) != 1:
        raise ExportError(f"cannot export {op.name} over several axes to TFLite")
    shape, dtype = shape_dtype(op.results[0].type)
    builtin, table = ("ARG_MAX", "ArgMaxOptions") if op.name == "jlax.argmax" else ("ARG_MIN", "ArgMinOptions")
    t = ex.emit(builtin, [ex.full(op.operands[0]), ex.int_const(p["axes"], "axis")], shape, dtype,
                (table, {"output_type": tensor_type(dtype)}))
    ex.set_tensor(op.results[0], t)


@handles("jlax.cumsum")
def _cumsum(ex: Exporter, op: Operation) -> None:
    p = op.params()
    shape, dtype = shape_dtype(op.results[0].type)
    t = ex.emit("CUMSUM", [ex.full(op.operands[0]), ex.int_const(p["axis"], "axis")], shape, dtype,
                ("CumsumOptions", {"exclusive": False, "reverse": bool(p["reverse"])}))
    ex.set_tensor(op.results[0], t)


# ---- gather: the one-axis take (embedding lookups, jnp.take) -------------------------------------


@handles("jlax.gather")
def _gather(ex: Exporter, op: Operation) -> None:
    p = op.params()
    dn = p["dimension_numbers"]
    operand, indices = op.operands
    o_shape = shape_dtype(operand.type)[0]
    i_shape, i_dtype = shape_dtype(indices.type)
    out_shape, dtype = shape_dtype(op.results[0].type)
    ok = (len(dn.start_index_map) == 1 and tuple(dn.collapsed_slice_dims) == tuple(dn.start_index_map)
          and not dn.operand_batching_dims and i_shape and i_shape[-1] == 1 and i_dtype.kind in "iu")
    axis = dn.start_index_map[0] if ok else 0
    n_idx = len(i_shape) - 1
    expected_offsets = tuple(range(axis)) + tuple(range(axis + n_idx, len(o_shape) - 1 + n_idx))
    ok = ok and tuple(p["slice_sizes"]) == tuple(1 if d == axis else s for d, s in enumerate(o_shape)) \
        and tuple(dn.offset_dims) == expected_offsets \
        and tuple(out_shape) == tuple(o_shape[:axis]) + tuple(i_shape[:-1]) + tuple(o_shape[axis + 1:])
    if not ok:
        raise ExportError("cannot export this jlax.gather to TFLite: only a take along one axis "
                          "(embedding lookups, jnp.take, x[idx]) has a TFLite builtin (GATHER)")
    idx_shape = tuple(i_shape[:-1])
    idx = ex.reshape(ex.full(indices), idx_shape)
    if i_dtype != np.int32:
        idx = ex.emit("CAST", [idx], idx_shape, np.int32)
    mode = str(p.get("mode", "")).rsplit(".", 1)[-1].upper()  # jax's GatherScatterMode
    valid = None
    if mode in ("CLIP", "FILL_OR_DROP"):  # LiteRT's GATHER fails on an index out of range
        if mode == "FILL_OR_DROP":
            inside = [ex.emit(cmp, [idx, ex.int_const(bound, "bound")], idx_shape, np.bool_)
                      for cmp, bound in (("GREATER_EQUAL", 0), ("LESS", o_shape[axis]))]
            valid = ex.emit("LOGICAL_AND", inside, idx_shape, np.bool_)
        idx = ex.emit("MAXIMUM", [idx, ex.int_const(0, "zero")], idx_shape, np.int32)
        idx = ex.emit("MINIMUM", [idx, ex.int_const(o_shape[axis] - 1, "last")], idx_shape, np.int32)
    params_t = ex.full(operand)
    t = ex.emit("GATHER", [params_t, idx], out_shape, dtype, ("GatherOptions", {"axis": axis}),
                quant=ex.g.quantization(params_t))
    if valid is not None:  # out-of-range indices give jax's fill value
        fill = p.get("fill_value")
        if fill is None:
            fill = (np.nan if dtype.kind == "f" else True if dtype == np.bool_
                    else np.iinfo(dtype).min if dtype.kind == "i" else np.iinfo(dtype).max)
        if ex.g.quantization(params_t) is not None:
            raise ExportError("cannot export a filling jlax.gather of int8 codes to TFLite")
        mask = ex.reshape(valid, (1,) * axis + idx_shape + (1,) * (len(o_shape) - axis - 1))
        t = ex.emit("SELECT_V2", [mask, t, ex.g.constant(np.asarray(fill, dtype), ex.name("fill"))],
                    out_shape, dtype)
    ex.set_tensor(op.results[0], t)


# ---- pooling ----------------------------------------------------------------------------------


def _same_padding(size: int, window: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (window - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def padding_mode(in_sizes, windows, strides, padding, dilations=None) -> str | None:
    """"VALID", "SAME" (TF's rule, also at stride 2), or None (explicit padding needed)."""
    dilations = dilations or [1] * len(windows)
    if all(lo == 0 and hi == 0 for lo, hi in padding):
        return "VALID"
    if all(tuple(p) == _same_padding(n, w, s, d)
           for n, w, s, d, p in zip(in_sizes, windows, strides, dilations, padding, strict=True)):
        return "SAME"
    return None


@handles("jlax.reduce_window_max", "jquant.reduce_window_max", "jlax.reduce_window_sum", "jlax.reduce_window_min")
def _pool(ex: Exporter, op: Operation) -> None:
    """MAX_POOL_2D / AVERAGE_POOL_2D (times the window's area: a sum), min as -max(-x)."""
    p = op.params()
    x = op.operands[0]
    shape, dtype = shape_dtype(x.type)
    out_shape, out_dtype = shape_dtype(op.results[0].type)
    win, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
    spatial = [d for d in range(len(shape)) if win[d] != 1 or strides[d] != 1 or tuple(padding[d]) != (0, 0)]
    dilated = any(d != 1 for d in (*p["base_dilation"], *p["window_dilation"]))
    if len(shape) < 3 or len(spatial) > 2 or dilated or 0 in spatial:
        raise ExportError(f"cannot export {op.name} with window {tuple(win)} to TFLite: pooling takes "
                          "one or two spatial axes between batch and channels, without dilation")
    channel = len(shape) - 1
    if spatial and spatial[-1] == channel:
        raise ExportError(f"cannot export {op.name} pooling over the last (channel) axis to TFLite")
    spatial = [d for d in range(1, channel)][-2:] if len(shape) >= 4 else [1]
    if any(win[d] != 1 or strides[d] != 1 for d in range(1, channel) if d not in spatial):
        raise ExportError(f"cannot export {op.name} with window {tuple(win)} to TFLite")
    batch = math.prod(shape[:spatial[0]])
    hw = [shape[d] for d in spatial]
    kh, kw = ([1] if len(spatial) == 1 else []) + [win[d] for d in spatial]
    sh, sw = ([1] if len(spatial) == 1 else []) + [strides[d] for d in spatial]
    pads = ([(0, 0)] if len(spatial) == 1 else []) + [tuple(padding[d]) for d in spatial]
    hw4 = ([1] if len(spatial) == 1 else []) + hw
    mode = padding_mode(hw4, (kh, kw), (sh, sw), pads)
    if op.name == "jlax.reduce_window_sum" and mode != "VALID":
        mode = None  # AVERAGE_POOL_2D's SAME divides by the unpadded count: pad with zeros instead
    t = ex.full(x)
    quant = ex.g.quantization(t)
    if dtype.kind != "f" and quant is None:
        raise ExportError(f"cannot export an integer {op.name} to TFLite (its pooling takes float or "
                          "quantized int8 tensors)")
    minimum = op.name == "jlax.reduce_window_min"
    if minimum:
        if dtype.kind != "f":
            raise ExportError("cannot export an integer jlax.reduce_window_min to TFLite")
        t = ex.emit("NEG", [t], shape, dtype)
    t = ex.reshape(t, (batch, *hw4, shape[channel]))
    if mode is None:
        if any(lo < 0 or hi < 0 for lo, hi in pads):
            raise ExportError(f"cannot export {op.name} with negative padding {pads} to TFLite")
        if op.name == "jlax.reduce_window_sum":
            pad_value = np.zeros((), dtype)
        elif dtype.kind == "f":
            pad_value = np.full((), -np.inf, dtype)
        else:
            pad_value = np.full((), np.iinfo(dtype).min, dtype)
        padded = (batch, hw4[0] + sum(pads[0]), hw4[1] + sum(pads[1]), shape[channel])
        t = ex.emit("PADV2", [t, ex.int_const([[0, 0], list(pads[0]), list(pads[1]), [0, 0]], "paddings"),
                              ex.g.constant(pad_value, ex.name("pad_value"), quant)], padded, dtype, quant=quant)
        mode = "VALID"
    out_hw = ([1] if len(spatial) == 1 else []) + [out_shape[d] for d in spatial]
    pooled_shape = (batch, *out_hw, shape[channel])
    options = ("Pool2DOptions", {"padding": PADDING[mode], "stride_w": sw, "stride_h": sh,
                                 "filter_width": kw, "filter_height": kh})
    if op.name == "jlax.reduce_window_sum":
        t = ex.emit("AVERAGE_POOL_2D", [t], pooled_shape, dtype, options)
        area = ex.g.constant(np.full((), kh * kw, dtype), ex.name("window_area"))
        t = ex.emit("MUL", [t, area], pooled_shape, dtype, ("MulOptions", {}))
    else:
        t = ex.emit("MAX_POOL_2D", [t], pooled_shape, dtype, options, quant=quant)
    if minimum:
        t = ex.emit("NEG", [t], pooled_shape, dtype)
    ex.set_tensor(op.results[0], ex.reshape(t, out_shape))


def _padding_enum():
    import tflite
    return {"SAME": tflite.Padding.SAME, "VALID": tflite.Padding.VALID}


PADDING = _padding_enum()


# ---- row ops ---------------------------------------------------------------------------------


@handles("jfuse.softmax")
def _softmax(ex: Exporter, op: Operation) -> None:
    shape, dtype = shape_dtype(op.results[0].type)
    ex.set_tensor(op.results[0], ex.emit("SOFTMAX", [ex.full(op.operands[0])], shape, dtype,
                                         ("SoftmaxOptions", {"beta": 1.0})))


@handles("jfuse.layer_norm")
def _layer_norm(ex: Exporter, op: Operation) -> None:
    """(x - mean) * rsqrt(mean((x - mean)^2) + eps) * scale + bias, as builtins (TFLite has
    no LayerNorm builtin; XNNPACK runs these as a handful of vector ops)."""
    shape, dtype = shape_dtype(op.results[0].type)
    x = ex.full(op.operands[0])
    axis = ex.int_const([len(shape) - 1], "axis")
    row = (*shape[:-1], 1)
    keep = ("ReducerOptions", {"keep_dims": True})
    mean = ex.emit("MEAN", [x, axis], row, dtype, keep)
    centred = ex.emit("SUB", [x, mean], shape, dtype, ("SubOptions", {}))
    var = ex.emit("MEAN", [ex.emit("MUL", [centred, centred], shape, dtype, ("MulOptions", {})), axis], row,
                  dtype, keep)
    eps = ex.g.constant(np.full((), op.epsilon, dtype), ex.name("epsilon"))
    inv = ex.emit("RSQRT", [ex.emit("ADD", [var, eps], row, dtype, ("AddOptions", {}))], row, dtype)
    y = ex.emit("MUL", [centred, inv], shape, dtype, ("MulOptions", {}))
    scale, bias = op.vectors(op.operands[1:])
    if scale is not None:
        y = ex.emit("MUL", [y, ex.operand(scale)], shape, dtype, ("MulOptions", {}))
    if bias is not None:
        y = ex.emit("ADD", [y, ex.operand(bias)], shape, dtype, ("AddOptions", {}))
    ex.set_tensor(op.results[0], y)


# ---- functions TFLite has no builtin for, from builtins ------------------------------------------

# Abramowitz & Stegun 7.1.26: erfc(a) = t (a1 + t (a2 + ... + t a5)) exp(-a^2), t = 1 / (1 + p a),
# a >= 0, absolute error <= 1.5e-7 (float32's own rounding of erf near 1 is 6e-8)
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


@handles("jlax.erf", "jlax.erfc")
def _erf(ex: Exporter, op: Operation) -> None:
    x = ex.full(op.operands[0])
    shape, dtype = ex.shape_of(x), ex.g.dtype(x)

    def c(value, hint):
        return ex.g.constant(np.full((), value, dtype), ex.name(hint))

    def binary(builtin, a, b):
        table = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions", "DIV": "DivOptions"}.get(builtin)
        return ex.emit(builtin, [a, b], shape, dtype, (table, {}) if table else None)

    a = ex.emit("ABS", [x], shape, dtype)
    t = binary("DIV", c(1.0, "one"), binary("ADD", c(1.0, "one"), binary("MUL", a, c(_ERF_P, "erf_p"))))
    poly = binary("MUL", t, c(_ERF_A[-1], "erf_a"))
    for coefficient in reversed(_ERF_A[:-1]):
        poly = binary("MUL", t, binary("ADD", poly, c(coefficient, "erf_a")))
    tail = binary("MUL", poly, ex.emit("EXP", [ex.emit("NEG", [binary("MUL", a, a)], shape, dtype)], shape, dtype))
    if op.name == "jlax.erf":  # sign(x) (1 - erfc(|x|))
        y = binary("MUL", ex.emit("SIGN", [x], shape, dtype), binary("SUB", c(1.0, "one"), tail))
    else:  # erfc(|x|) for x >= 0, 2 - erfc(|x|) below
        positive = ex.emit("GREATER_EQUAL", [x, c(0.0, "zero")], shape, np.bool_)
        y = ex.emit("SELECT_V2", [positive, tail, binary("SUB", c(2.0, "two"), tail)], shape, dtype)
    ex.set_tensor(op.results[0], y)


@handles("jlax.round")
def _round(ex: Exporter, op: Operation) -> None:
    x = ex.full(op.operands[0])
    shape, dtype = ex.shape_of(x), ex.g.dtype(x)
    if int(op.params()["rounding_method"]) == 1:  # to nearest even: TFLite's ROUND
        ex.set_tensor(op.results[0], ex.emit("ROUND", [x], shape, dtype))
        return
    half = ex.g.constant(np.full((), 0.5, dtype), ex.name("half"))  # away from zero: sign(x) floor(|x| + 1/2)
    magnitude = ex.emit("FLOOR", [ex.emit("ADD", [ex.emit("ABS", [x], shape, dtype), half], shape, dtype,
                                          ("AddOptions", {}))], shape, dtype)
    ex.set_tensor(op.results[0], ex.emit("MUL", [ex.emit("SIGN", [x], shape, dtype), magnitude], shape, dtype,
                                         ("MulOptions", {})))


@handles("jlax.is_finite")
def _is_finite(ex: Exporter, op: Operation) -> None:
    x = ex.full(op.operands[0])
    shape, dtype = ex.shape_of(x), ex.g.dtype(x)
    zero = ex.g.constant(np.zeros((), dtype), ex.name("zero"))  # x - x is 0 exactly when x is finite
    ex.set_tensor(op.results[0], ex.emit("EQUAL", [ex.emit("SUB", [x, x], shape, dtype, ("SubOptions", {})), zero],
                                         shape, np.bool_))


@handles("jlax.tan")
def _tan(ex: Exporter, op: Operation) -> None:
    x = ex.full(op.operands[0])
    shape, dtype = ex.shape_of(x), ex.g.dtype(x)
    ex.set_tensor(op.results[0], ex.emit("DIV", [ex.emit("SIN", [x], shape, dtype), ex.emit("COS", [x], shape, dtype)],
                                         shape, dtype, ("DivOptions", {})))


@handles("jlax.split")
def _split(ex: Exporter, op: Operation) -> None:
    p = op.params()
    axis = int(p["axis"])
    x = ex.full(op.operands[0])
    start = 0
    for r, size in zip(op.results, p["sizes"], strict=True):
        shape, dtype = shape_dtype(r.type)
        begin = [0] * len(shape)
        begin[axis] = start
        ex.set_tensor(r, ex.emit("SLICE", [x, ex.int_const(begin, "begin"), ex.int_const(shape, "size")], shape, dtype,
                                 quant=ex.g.quantization(x)))
        start += int(size)


@handles("jlax.top_k")
def _top_k(ex: Exporter, op: Operation) -> None:
    p = op.params()
    x = ex.full(op.operands[0])
    rank = len(ex.shape_of(x))
    if int(p.get("axis", rank - 1)) % rank != rank - 1:
        raise ExportError("cannot export jlax.top_k over an axis other than the last to TFLite (TOPK_V2)")
    (v_shape, v_dtype), (i_shape, i_dtype) = (shape_dtype(r.type) for r in op.results)
    values = ex.g.tensor(v_shape, v_dtype, ex.name("top_k_values"))
    indices = ex.g.tensor(i_shape, i_dtype, ex.name("top_k_indices"))
    ex.g.operator("TOPK_V2", [x, ex.int_const(int(p["k"]), "k")], [values, indices])
    ex.set_tensor(op.results[0], values)
    ex.set_tensor(op.results[1], indices)


# ---- control flow: unrolled, or both branches computed -------------------------------------------

# a scan of at most this many steps is unrolled into the file (TFLite's WHILE would need a
# subgraph per body and runs without XNNPACK); longer ones are an ExportError
MAX_UNROLLED_STEPS = 256


def _run_block(ex: Exporter, block, args: list[Val]) -> list[Val]:
    """Lower a region's ops with its arguments bound to ``args``; the yielded values."""
    for arg, val in zip(block.args, args, strict=True):
        ex.vals[arg] = val
    for inner in block.ops:
        if inner.name == "jlax.yield":
            return [ex.vals[v] for v in inner.operands]
        ex.lower(inner)
    raise ExportError("a region without jlax.yield")


def _step_of(ex: Exporter, v: SSAValue, i: int) -> Val:
    """Slice i along axis 0 of a scanned operand."""
    val = ex.vals[v]
    shape = val.full_shape[1:]
    if val.const is not None:
        c = np.broadcast_to(val.const, val.full_shape)[i]
        scale, axis = val.scale, val.scale_axis
        if scale is not None and axis == 0:  # the step's own scale, one for the slice
            scale, axis = np.asarray(scale).reshape(-1)[i:i + 1], -1
        elif axis > 0:
            axis -= 1
        return Val(shape, val.dtype, const=c, scale=scale, scale_axis=axis)
    t = ex.full(v)
    begin = [i] + [0] * len(shape)
    piece = ex.emit("SLICE", [t, ex.int_const(begin, "begin"), ex.int_const((1, *shape), "size")], (1, *shape),
                    val.dtype, quant=ex.g.quantization(t))
    return Val(shape, val.dtype, tensor=ex.reshape(piece, shape))


def _stacked(ex: Exporter, steps: list[Val], shape, dtype) -> Val:
    if all(s.const is not None and s.scale is None for s in steps):
        return Val(tuple(shape), np.dtype(dtype), const=np.stack([np.broadcast_to(s.const, s.full_shape) for s in steps]))
    tensors = [ex.full_of(s) for s in steps]
    q = ex.g.quantization(tensors[0])
    return Val(tuple(shape), np.dtype(dtype), tensor=ex.emit("PACK", tensors, shape, dtype,
                                                             ("PackOptions", {"values_count": len(tensors), "axis": 0}),
                                                             quant=q))


@handles("jlax.scan")
def _scan(ex: Exporter, op: Operation) -> None:
    length = op.length
    if not isinstance(length, int) or length > MAX_UNROLLED_STEPS:
        raise ExportError(f"cannot export a jlax.scan of {length} steps to TFLite: scans of at most "
                          f"{MAX_UNROLLED_STEPS} steps are unrolled into the file")
    nconst, ncarry = op.num_consts, op.num_carry
    inputs = list(op.inputs)
    consts = [ex.vals[v] for v in inputs[:nconst]]
    carry = [ex.vals[v] for v in inputs[nconst:nconst + ncarry]]
    xs = inputs[nconst + ncarry:]
    block = op.body.blocks.first
    ys: dict[int, list[Val]] = {}
    for i in (reversed(range(length)) if op.reverse else range(length)):
        out = _run_block(ex, block, [*consts, *carry, *(_step_of(ex, x, i) for x in xs)])
        carry = out[:ncarry]
        ys[i] = out[ncarry:]
    for r, val in zip(op.outputs[:ncarry], carry, strict=True):
        ex.vals[r] = val
    for k, r in enumerate(op.outputs[ncarry:]):
        shape, dtype = shape_dtype(r.type)
        ex.vals[r] = _stacked(ex, [ys[i][k] for i in range(length)], shape, dtype)


@handles("jlax.cond")
def _cond(ex: Exporter, op: Operation) -> None:
    """Every branch computed, the result selected by the index (branches are pure; jax
    clamps the index into range, as the comparisons below do)."""
    index, *operands = op.inputs
    args = [ex.vals[v] for v in operands]
    outs = [_run_block(ex, region.blocks.first, args) for region in op.branches]
    c = ex.full_const(index)
    if c is not None:  # a constant index: that branch
        chosen = outs[int(np.clip(int(c), 0, len(outs) - 1))]
        for r, val in zip(op.outputs, chosen, strict=True):
            ex.vals[r] = val
        return
    idx = ex.full(index)
    for k, r in enumerate(op.outputs):
        shape, dtype = shape_dtype(r.type)
        tensors = [ex.full_of(o[k]) for o in outs]
        result = tensors[-1]
        for b in reversed(range(len(tensors) - 1)):  # index <= b picks branch b (below: clamped)
            bound = ex.g.constant(np.asarray(b, ex.g.dtype(idx)), ex.name("branch"))
            pick = ex.emit("LESS_EQUAL", [idx, bound], (), np.bool_)
            result = ex.emit("SELECT_V2", [pick, tensors[b], result], shape, dtype)
        ex.set_tensor(r, result)


@handles("jlax.tile")
def _tile(ex: Exporter, op: Operation) -> None:
    shape, dtype = shape_dtype(op.results[0].type)
    x = ex.full(op.operands[0])
    reps = ex.int_const(op.params()["reps"], "multiples")
    ex.set_tensor(op.results[0], ex.emit("TILE", [x, reps], shape, dtype, quant=ex.g.quantization(x)))


@handles("jlax.dynamic_update_slice")
def _dynamic_update_slice(ex: Exporter, op: Operation) -> None:
    x, update, *starts = op.operands
    shape, dtype = shape_dtype(op.results[0].type)
    consts = [ex.full_const(s) for s in starts]
    if all(c is not None for c in consts):
        u_shape = shape_dtype(update.type)[0]
        begin = [int(np.clip(int(c), 0, n - u)) for c, n, u in zip(consts, shape, u_shape, strict=True)]  # jax clamps
        index = ex.int_const(begin, "start")
    else:  # the start indices as one int32 vector (LiteRT clamps as jax does)
        scalars = [ex.reshape(ex.full(s), (1,)) for s in starts]
        scalars = [t if ex.g.dtype(t) == np.int32 else ex.emit("CAST", [t], (1,), np.int32) for t in scalars]
        index = ex.emit("CONCATENATION", scalars, (len(starts),), np.int32, ("ConcatenationOptions", {"axis": 0}))
    xt, ut = ex.full(x), ex.full(update)
    if ex.g.quantization(xt) != ex.g.quantization(ut):
        raise ExportError("cannot export jlax.dynamic_update_slice of int8 tensors quantized differently")
    ex.set_tensor(op.results[0], ex.emit("DYNAMIC_UPDATE_SLICE", [xt, ut, index], shape, dtype,
                                         quant=ex.g.quantization(xt)))


@handles("jlax.rem")
def _rem(ex: Exporter, op: Operation) -> None:
    """int32 x - trunc(x / y) * y (lax.rem's sign follows x; TFLite's FLOOR_MOD's follows y)."""
    shape, dtype = shape_dtype(op.results[0].type)
    if dtype != np.int32:
        raise ExportError(f"cannot export a {dtype.name} jlax.rem to TFLite (int32 only)")
    x, y = (ex.operand(v) for v in op.operands)
    quotient = ex.emit("DIV", [x, y], shape, dtype, ("DivOptions", {}))
    ex.set_tensor(op.results[0], ex.emit("SUB", [x, ex.emit("MUL", [quotient, y], shape, dtype, ("MulOptions", {}))],
                                         shape, dtype, ("SubOptions", {})))
