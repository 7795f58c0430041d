"""``jquant``: int8 quantization ops: symmetric (zero point 0, q in [-127, 127]) for weights
and calibrated activations, asymmetric per row for dynamic-range activations.

Scales are operands (``jlax.weight`` for weights, ``jlax.constant`` for calibrated
activation scales), never inline arrays, so per-channel scales of big layers do not flood
dumps. ``axis`` is the axis a per-channel scale runs along (-1: one scale per tensor); it and
the matmuls' ``activation`` and ``w_axis`` are typed properties (``axis = 1 : i64``).

* ``jquant.quantize %x, %scale``   f32 -> i8: ``clip(round(x * (1 / scale)), -127, 127)``, -128 for NaN/Inf
* ``jquant.dequantize %q, %scale`` i8 -> f32: ``q * scale``, NaN for -128
* ``jquant.upcast %w``             f16 -> f32 (float16 storage)
* ``jquant.dynamic_dot`` / ``jquant.dynamic_conv``: float activations quantized per row
  (dot) or per sample (conv) on the fly, asymmetric (a scale and a zero point spanning
  [min(x, 0), max(x, 0)]: ``int8.row_params``), int8 x int8 -> int32 minus zero * sum(w),
  rescaled, + bias, activation -> f32. No calibration needed.
* ``jquant.dynamic_act_dot``: a dot_general between two float activations (attention's
  scores and weighted sum), both quantized on the fly, asymmetric as the dynamic ops' rows
  -- one scale and zero point per index of an operand's batch and free dims, over the
  contracting dims -- int8 x int8 ->
  int32, rescaled -> f32.
* ``jquant.qdot`` / ``jquant.qconv``: int8 activations with a calibrated scale, int8
  weights, int32 accumulation, + bias, activation; the result is requantized to int8 when
  an output scale is given (``out_scale``), else f32.
* ``jquant.max`` / ``jquant.reduce_window_max``: a max (relu) or max-pool on int8 codes.

Code -128 stands for a non-finite value (dialects/int8.py): quantize gives it, dequantize
turns it into NaN, the matmuls make a row that reads it NaN, the code ops let it win. (The
dynamic ops' rows use every code: a row with NaN or Inf has a NaN scale instead.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from xdsl.dialects.builtin import I8, I32, I64, Float32Type, IntegerAttr, TensorType, i64
from xdsl.ir import Attribute, Dialect, SSAValue
from xdsl.irdl import (
    AttrSizedOperandSegments,
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_op_definition,
    operand_def,
    opt_operand_def,
    prop_def,
    result_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.traits import Pure
from xdsl.utils.exceptions import VerifyException

from jaxlite.dialects import int8, jlax
from jaxlite.dialects.fused import Activation, ActivationAttr
from jaxlite.dialects.primitive import MATMUL_OPTIONAL, PrimitiveOp, dot_and_conv
from jaxlite.dialects.types import shape_dtype, tensor_type


def _i64(value: int) -> IntegerAttr:
    return IntegerAttr(int(value), i64)


def _check_scale(op: IRDLOperation, value_type: Attribute, scale: SSAValue, axis: int) -> None:
    shape, _ = shape_dtype(value_type)
    s_shape, s_dtype = shape_dtype(scale.type)
    if s_dtype.name != "float32":
        raise VerifyException(f"{op.name}: scales are float32, got {scale.type}")
    if axis == -1:
        if s_shape not in ((), (1,)):
            raise VerifyException(f"{op.name}: a per-tensor scale is a scalar, got {scale.type}")
    elif not 0 <= axis < len(shape) or s_shape != (shape[axis],):
        raise VerifyException(f"{op.name}: per-channel scale {scale.type} does not match axis {axis} of {value_type}")


class ScaledOp(IRDLOperation):
    """Base of quantize / dequantize: an input and its scale along ``axis``."""

    scale = operand_def(TensorType[Float32Type])
    axis_attr = prop_def(IntegerAttr[I64], prop_name="axis")
    traits = traits_def(Pure())
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$input `,` $scale attr-dict `:` type($input) `,` type($scale) `->` type($result)"

    def __init__(self, x: SSAValue, scale: SSAValue, axis: int, result_dtype: str):
        shape, _ = shape_dtype(x.type)
        super().__init__(operands=[x, scale], result_types=[tensor_type(shape, result_dtype)],
                         properties={"axis": _i64(axis)})

    @property
    def axis(self) -> int:
        return self.axis_attr.value.data

    def verify_(self) -> None:
        _check_scale(self, self.input.type, self.scale, self.axis)
        if shape_dtype(self.input.type)[0] != shape_dtype(self.result.type)[0]:
            raise VerifyException(f"{self.name}: result shape differs from input shape")


@irdl_op_definition
class QuantizeOp(ScaledOp):
    name = "jquant.quantize"
    input = operand_def(TensorType[Float32Type])
    result = result_def(TensorType[I8])

    def __init__(self, x: SSAValue, scale: SSAValue, axis: int = -1):
        super().__init__(x, scale, axis, "int8")

    def evaluate(self, x, scale):
        return [int8.quantize(x, int8.expand(scale, x.ndim, self.axis))]


@irdl_op_definition
class DequantizeOp(ScaledOp):
    name = "jquant.dequantize"
    input = operand_def(TensorType[I8] | TensorType[I32])
    result = result_def(TensorType[Float32Type])

    def __init__(self, q: SSAValue, scale: SSAValue, axis: int = -1):
        super().__init__(q, scale, axis, "float32")

    def evaluate(self, q, scale):
        return [int8.dequantize(q, scale, self.axis)]


@irdl_op_definition
class UpcastOp(IRDLOperation):
    """A weight stored in float16/bfloat16, used as float32 (upcast once at load on CPU)."""

    name = "jquant.upcast"
    input = operand_def(TensorType)
    result = result_def(TensorType[Float32Type])
    traits = traits_def(Pure())
    assembly_format = "$input attr-dict `:` type($input) `->` type($result)"

    def __init__(self, x: SSAValue):
        super().__init__(operands=[x], result_types=[tensor_type(shape_dtype(x.type)[0], "float32")])

    def verify_(self) -> None:
        shape, dtype = shape_dtype(self.input.type)
        if dtype.name not in ("float16", "bfloat16") or shape != shape_dtype(self.result.type)[0]:
            raise VerifyException("jquant.upcast: float16/bfloat16 in, float32 of the same shape out")

    def evaluate(self, w):
        return [w.astype(np.float32)]


class QuantizedMatmulOp(PrimitiveOp):
    """Base of the int8 dot/conv ops: the attributes of the float op they replace
    (dimension numbers, strides, ...), the ``activation`` applied last, and ``w_axis`` (the
    kernel's output-feature axis, along which ``w_scale`` runs; -1: per tensor)."""

    activation_attr = prop_def(ActivationAttr, prop_name="activation")
    w_axis_attr = prop_def(IntegerAttr[I64], prop_name="w_axis")
    traits = traits_def(Pure())
    irdl_options = (AttrSizedOperandSegments(as_property=True), ParsePropInAttrDict())

    def _properties(self, activation: str, w_axis: int) -> dict[str, Attribute]:
        return {"activation": ActivationAttr(Activation(activation)), "w_axis": _i64(w_axis)}

    @property
    def activation(self) -> str:
        return self.activation_attr.data.value

    @property
    def w_axis(self) -> int:
        return self.w_axis_attr.value.data

    def _verify_common(self, lhs_type, rhs_type, result_type) -> None:
        if shape_dtype(rhs_type)[1].name != "int8":
            raise VerifyException(f"{self.name}: the kernel must be int8, got {rhs_type}")
        as_float = [tensor_type(shape_dtype(t)[0], "float32") for t in (lhs_type, rhs_type)]
        self.verify_primitive(as_float, (result_type,), shapes_only=True)
        _check_scale(self, rhs_type, self.w_scale, self.w_axis)


class DynamicMatmulOp(QuantizedMatmulOp):
    lhs = operand_def(TensorType[Float32Type])
    rhs = operand_def(TensorType[I8])
    w_scale = operand_def(TensorType[Float32Type])
    bias = opt_operand_def(TensorType[Float32Type])
    result = result_def(TensorType[Float32Type])
    assembly_format = ("$lhs `,` $rhs `,` $w_scale (`bias` $bias^)? attr-dict `:` type($lhs) `,` "
                       "type($rhs) `,` type($w_scale) (`,` type($bias)^)? `->` type($result)")

    def __init__(self, lhs, rhs, w_scale, bias, result_type, params: dict[str, Attribute],
                 activation: str, w_axis: int):
        super().__init__(operands=[lhs, rhs, w_scale, bias], result_types=[result_type], attributes=dict(params),
                         properties=self._properties(activation, w_axis))

    def verify_(self) -> None:
        self._verify_common(self.lhs.type, self.rhs.type, self.result.type)


DynamicDotOp, DynamicConvOp = dot_and_conv(
    DynamicMatmulOp, {"dot_general": ("DynamicDotOp", "jquant.dynamic_dot"),
                      "conv_general_dilated": ("DynamicConvOp", "jquant.dynamic_conv")},
    "int8 {} with activations quantized on the fly (per row for dots, per sample for "
    "convolutions), int8 x int8 -> int32, rescaled, + bias, activation -> f32.")


class StaticMatmulOp(QuantizedMatmulOp):
    """A float32 ``lhs`` is quantized with ``x_scale`` first: the calibrated input quantize
    folded into the op, so the kernel quantizes as it reads (one op, no int8 copy)."""

    lhs = operand_def(TensorType[I8] | TensorType[Float32Type])
    rhs = operand_def(TensorType[I8])
    x_scale = operand_def(TensorType[Float32Type])
    w_scale = operand_def(TensorType[Float32Type])
    bias = opt_operand_def(TensorType[Float32Type])
    out_scale = opt_operand_def(TensorType[Float32Type])
    result = result_def(TensorType[I8] | TensorType[Float32Type])
    assembly_format = ("$lhs `,` $rhs `,` $x_scale `,` $w_scale (`bias` `(` $bias^ `:` type($bias) `)`)? "
                       "(`out_scale` `(` $out_scale^ `:` type($out_scale) `)`)? attr-dict `:` "
                       "type($lhs) `,` type($rhs) `,` type($x_scale) `,` type($w_scale) `->` type($result)")

    def __init__(self, lhs, rhs, x_scale, w_scale, bias, out_scale, result_shape, params, activation, w_axis):
        dtype = "int8" if out_scale is not None else "float32"
        super().__init__(operands=[lhs, rhs, x_scale, w_scale, bias, out_scale],
                         result_types=[tensor_type(result_shape, dtype)], attributes=dict(params),
                         properties=self._properties(activation, w_axis))

    def verify_(self) -> None:
        self._verify_common(self.lhs.type, self.rhs.type, self.result.type)
        _check_scale(self, self.lhs.type, self.x_scale, -1)
        wants_int8 = self.out_scale is not None
        if (shape_dtype(self.result.type)[1].name == "int8") != wants_int8:
            raise VerifyException(f"{self.name}: the result is int8 exactly when out_scale is given")


QDotOp, QConvOp = dot_and_conv(
    StaticMatmulOp, {"dot_general": ("QDotOp", "jquant.qdot"), "conv_general_dilated": ("QConvOp", "jquant.qconv")},
    "int8 x int8 -> int32 {} with calibrated scales; an int8 (requantized with out_scale) "
    "or float32 result.")


@irdl_op_definition
class DynamicActDotOp(PrimitiveOp):
    """dot_general between two float activations, both quantized on the fly (see above)."""

    name = "jquant.dynamic_act_dot"
    PRIMITIVE: ClassVar[str] = "dot_general"
    OPTIONAL_PARAMS: ClassVar[tuple[str, ...]] = MATMUL_OPTIONAL["dot_general"]
    lhs = operand_def(TensorType[Float32Type])
    rhs = operand_def(TensorType[Float32Type])
    result = result_def(TensorType[Float32Type])
    traits = traits_def(Pure())
    assembly_format = "$lhs `,` $rhs attr-dict `:` type($lhs) `,` type($rhs) `->` type($result)"

    def __init__(self, lhs: SSAValue, rhs: SSAValue, result_type: Attribute, params: dict[str, Attribute]):
        super().__init__(operands=[lhs, rhs], result_types=[result_type], attributes=dict(params))

    def verify_(self) -> None:
        self.verify_primitive((self.lhs.type, self.rhs.type), (self.result.type,), shapes_only=True)


class CodeOp(PrimitiveOp):
    """An op on int8 codes of one scale (which it keeps), as the lax primitive of the same
    name computes it, except that NAN_CODE orders above every other code: a non-finite
    value wins a max, as NaN does in float. What a max or max-pool of dequantized values
    becomes once the dequantize moves below it (passes/quantize.py)."""

    inputs = var_operand_def(TensorType[I8])
    outputs = var_result_def(TensorType[I8])
    traits = traits_def(Pure())
    assembly_format = "$inputs attr-dict `:` functional-type($inputs, $outputs)"

    def __init__(self, inputs: Sequence[SSAValue], result_types: Sequence[Attribute],
                 params: dict[str, Attribute]):
        super().__init__(operands=[list(inputs)], result_types=[list(result_types)], attributes=dict(params))

    def evaluate(self, *codes) -> list:
        return [int8.from_ordered(r) for r in self.bind(*[int8.ordered(q) for q in codes])]

    def verify_(self) -> None:
        self.verify_primitive([o.type for o in self.operands], [r.type for r in self.results])


def _code_op(primitive: str, cls_name: str) -> type[CodeOp]:
    cls = type(cls_name, (CodeOp,), {
        "name": f"jquant.{primitive}", "PRIMITIVE": primitive,
        "OPTIONAL_PARAMS": jlax.PRIMITIVE_OPS[primitive].OPTIONAL_PARAMS, "__module__": __name__,
        "__qualname__": cls_name, "__doc__": f"``lax.{primitive}`` on int8 codes (see CodeOp).",
        "__annotations__": {"PRIMITIVE": ClassVar[str], "OPTIONAL_PARAMS": ClassVar[tuple[str, ...]]},
    })
    return irdl_op_definition(cls)


CodeMaxOp = _code_op("max", "CodeMaxOp")
CodeReduceWindowMaxOp = _code_op("reduce_window_max", "CodeReduceWindowMaxOp")
# the lax primitives whose jquant code op exists
CODE_OPS: dict[str, type[CodeOp]] = {"max": CodeMaxOp, "reduce_window_max": CodeReduceWindowMaxOp}


JQuant = Dialect("jquant", [QuantizeOp, DequantizeOp, UpcastOp, DynamicDotOp, DynamicConvOp, DynamicActDotOp,
                            QDotOp, QConvOp, CodeMaxOp, CodeReduceWindowMaxOp], [])
