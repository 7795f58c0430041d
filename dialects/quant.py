"""``jquant``: symmetric int8 quantization ops (zero point 0, q in [-127, 127]).

Scales are operands (``jlax.weight`` for weights, ``jlax.constant`` for calibrated
activation scales), never inline arrays, so per-channel scales of big layers do not flood
dumps. ``axis`` is the axis a per-channel scale runs along (-1: one scale per tensor).

* ``jquant.quantize %x, %scale``   f32 -> i8: ``clip(round(x / scale), -127, 127)``
* ``jquant.dequantize %q, %scale`` i8 -> f32: ``q * scale``
* ``jquant.upcast %w``             f16 -> f32 (float16 storage)
* ``jquant.dynamic_dot`` / ``jquant.dynamic_conv``: float activations quantized per row
  (dot) or per sample (conv) on the fly, int8 x int8 -> int32, rescaled, + bias,
  activation -> f32. No calibration needed.
* ``jquant.dynamic_act_dot``: a dot_general between two float activations (attention's
  scores and weighted sum), both quantized on the fly -- lhs with one scale per index of
  its batch and free dims (max over the contracting dims), rhs likewise -- int8 x int8 ->
  int32, rescaled -> f32.
* ``jquant.qdot`` / ``jquant.qconv``: int8 activations with a calibrated scale, int8
  weights, int32 accumulation, + bias, activation; the result is requantized to int8 when
  an output scale is given (``out_scale``), else f32.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from xdsl.dialects.builtin import I8, I32, Float32Type, IntAttr, StringAttr, TensorType
from xdsl.ir import Attribute, Dialect, SSAValue
from xdsl.irdl import (
    AttrSizedOperandSegments,
    IRDLOperation,
    irdl_op_definition,
    operand_def,
    opt_operand_def,
    result_def,
    traits_def,
)
from xdsl.traits import Pure
from xdsl.utils.exceptions import VerifyException

from jaxlite.dialects import fused, int8, jlax
from jaxlite.dialects.types import shape_dtype, tensor_type


def _axis(op: IRDLOperation) -> int:
    attr = op.attributes.get("axis")
    if not isinstance(attr, IntAttr):
        raise VerifyException(f"{op.name}: needs an integer attribute 'axis' (-1 for per-tensor)")
    return attr.data


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


@irdl_op_definition
class QuantizeOp(IRDLOperation):
    name = "jquant.quantize"
    input = operand_def(TensorType[Float32Type])
    scale = operand_def(TensorType[Float32Type])
    result = result_def(TensorType[I8])
    traits = traits_def(Pure())
    assembly_format = "$input `,` $scale attr-dict `:` type($input) `,` type($scale) `->` type($result)"

    def __init__(self, x: SSAValue, scale: SSAValue, axis: int = -1):
        shape, _ = shape_dtype(x.type)
        super().__init__(operands=[x, scale], result_types=[tensor_type(shape, "int8")],
                         attributes={"axis": IntAttr(axis)})

    def verify_(self) -> None:
        _check_scale(self, self.input.type, self.scale, _axis(self))
        if shape_dtype(self.input.type)[0] != shape_dtype(self.result.type)[0]:
            raise VerifyException("jquant.quantize: result shape differs from input shape")

    def evaluate(self, x, scale):
        return [int8.quantize(x, int8.expand(scale, x.ndim, _axis(self)))]


@irdl_op_definition
class DequantizeOp(IRDLOperation):
    name = "jquant.dequantize"
    input = operand_def(TensorType[I8] | TensorType[I32])
    scale = operand_def(TensorType[Float32Type])
    result = result_def(TensorType[Float32Type])
    traits = traits_def(Pure())
    assembly_format = "$input `,` $scale attr-dict `:` type($input) `,` type($scale) `->` type($result)"

    def __init__(self, q: SSAValue, scale: SSAValue, axis: int = -1):
        shape, _ = shape_dtype(q.type)
        super().__init__(operands=[q, scale], result_types=[tensor_type(shape, "float32")],
                         attributes={"axis": IntAttr(axis)})

    def verify_(self) -> None:
        _check_scale(self, self.input.type, self.scale, _axis(self))
        if shape_dtype(self.input.type)[0] != shape_dtype(self.result.type)[0]:
            raise VerifyException("jquant.dequantize: result shape differs from input shape")

    def evaluate(self, q, scale):
        return [int8.dequantize(q, scale, _axis(self))]


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


class QuantizedMatmulOp(IRDLOperation):
    """Base of the int8 dot/conv ops: the attributes of the float op they replace
    (dimension numbers, strides, ...), ``activation``, and ``w_axis`` (the kernel's
    output-feature axis, along which ``w_scale`` runs)."""

    PRIMITIVE: ClassVar[str]
    OPTIONAL_PARAMS: ClassVar[tuple[str, ...]]
    SPECIAL: ClassVar[tuple[str, ...]] = ("activation", "w_axis")

    def primitive_params(self) -> dict[str, Attribute]:
        return {k: v for k, v in self.attributes.items() if k not in self.SPECIAL}

    @property
    def activation(self) -> str:
        return self.attributes["activation"].data

    @property
    def w_axis(self) -> int:
        return self.attributes["w_axis"].data

    def _verify_common(self, lhs_type, rhs_type, result_float_type) -> None:
        act = self.attributes.get("activation")
        if not isinstance(act, StringAttr) or act.data not in fused.ACTIVATIONS:
            raise VerifyException(f"{self.name}: activation must be one of {sorted(fused.ACTIVATIONS)}")
        if not isinstance(self.attributes.get("w_axis"), IntAttr):
            raise VerifyException(f"{self.name}: needs an integer attribute 'w_axis'")
        if shape_dtype(rhs_type)[1].name != "int8":
            raise VerifyException(f"{self.name}: the kernel must be int8, got {rhs_type}")
        as_float = [tensor_type(shape_dtype(t)[0], "float32") for t in (lhs_type, rhs_type)]
        key = jlax._params_key(self.primitive_params())
        expected = jlax._infer_types(self.name, self.PRIMITIVE, self.OPTIONAL_PARAMS, key, tuple(as_float))
        if isinstance(expected, str):
            raise VerifyException(f"{self.name}: {expected}")
        if shape_dtype(expected[0])[0] != shape_dtype(result_float_type)[0]:
            raise VerifyException(f"{self.name}: result shape does not match {self.PRIMITIVE} of the operands")
        _check_scale(self, rhs_type, self.w_scale, self.w_axis)


class DynamicMatmulOp(QuantizedMatmulOp):
    lhs = operand_def(TensorType[Float32Type])
    rhs = operand_def(TensorType[I8])
    w_scale = operand_def(TensorType[Float32Type])
    bias = opt_operand_def(TensorType[Float32Type])
    result = result_def(TensorType[Float32Type])
    traits = traits_def(Pure())
    irdl_options = (AttrSizedOperandSegments(as_property=True),)
    assembly_format = ("$lhs `,` $rhs `,` $w_scale (`bias` $bias^)? attr-dict `:` type($lhs) `,` "
                       "type($rhs) `,` type($w_scale) (`,` type($bias)^)? `->` type($result)")

    def __init__(self, lhs, rhs, w_scale, bias, result_type, params: dict[str, Attribute],
                 activation: str, w_axis: int):
        super().__init__(operands=[lhs, rhs, w_scale, bias], result_types=[result_type],
                         attributes={**params, "activation": StringAttr(activation), "w_axis": IntAttr(w_axis)})

    def verify_(self) -> None:
        self._verify_common(self.lhs.type, self.rhs.type, self.result.type)


@irdl_op_definition
class DynamicDotOp(DynamicMatmulOp):
    """int8 dot_general with per-row dynamic activation quantization."""

    name = "jquant.dynamic_dot"
    PRIMITIVE: ClassVar[str] = "dot_general"
    OPTIONAL_PARAMS: ClassVar[tuple[str, ...]] = jlax.SUPPORTED["dot_general"]


@irdl_op_definition
class DynamicConvOp(DynamicMatmulOp):
    """int8 convolution (im2col + one int8 GEMM) with per-sample dynamic activation scales."""

    name = "jquant.dynamic_conv"
    PRIMITIVE: ClassVar[str] = "conv_general_dilated"
    OPTIONAL_PARAMS: ClassVar[tuple[str, ...]] = jlax.SUPPORTED["conv_general_dilated"]


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
    traits = traits_def(Pure())
    irdl_options = (AttrSizedOperandSegments(as_property=True),)
    assembly_format = ("$lhs `,` $rhs `,` $x_scale `,` $w_scale (`bias` `(` $bias^ `:` type($bias) `)`)? "
                       "(`out_scale` `(` $out_scale^ `:` type($out_scale) `)`)? attr-dict `:` "
                       "type($lhs) `,` type($rhs) `,` type($x_scale) `,` type($w_scale) `->` type($result)")

    def __init__(self, lhs, rhs, x_scale, w_scale, bias, out_scale, result_shape, params, activation, w_axis):
        dtype = "int8" if out_scale is not None else "float32"
        super().__init__(operands=[lhs, rhs, x_scale, w_scale, bias, out_scale],
                         result_types=[tensor_type(result_shape, dtype)],
                         attributes={**params, "activation": StringAttr(activation), "w_axis": IntAttr(w_axis)})

    def verify_(self) -> None:
        self._verify_common(self.lhs.type, self.rhs.type, self.result.type)
        _check_scale(self, self.lhs.type, self.x_scale, -1)
        wants_int8 = self.out_scale is not None
        if (shape_dtype(self.result.type)[1].name == "int8") != wants_int8:
            raise VerifyException(f"{self.name}: the result is int8 exactly when out_scale is given")


@irdl_op_definition
class QDotOp(StaticMatmulOp):
    """int8 x int8 -> int32 dot_general with calibrated scales; int8 or f32 result."""

    name = "jquant.qdot"
    PRIMITIVE: ClassVar[str] = "dot_general"
    OPTIONAL_PARAMS: ClassVar[tuple[str, ...]] = jlax.SUPPORTED["dot_general"]


@irdl_op_definition
class QConvOp(StaticMatmulOp):
    """int8 convolution (im2col + int8 GEMM) with calibrated scales; int8 or f32 result."""

    name = "jquant.qconv"
    PRIMITIVE: ClassVar[str] = "conv_general_dilated"
    OPTIONAL_PARAMS: ClassVar[tuple[str, ...]] = jlax.SUPPORTED["conv_general_dilated"]


@irdl_op_definition
class DynamicActDotOp(IRDLOperation):
    """dot_general between two float activations, both quantized on the fly (see above)."""

    name = "jquant.dynamic_act_dot"
    PRIMITIVE: ClassVar[str] = "dot_general"
    OPTIONAL_PARAMS: ClassVar[tuple[str, ...]] = jlax.SUPPORTED["dot_general"]
    lhs = operand_def(TensorType[Float32Type])
    rhs = operand_def(TensorType[Float32Type])
    result = result_def(TensorType[Float32Type])
    traits = traits_def(Pure())
    assembly_format = "$lhs `,` $rhs attr-dict `:` type($lhs) `,` type($rhs) `->` type($result)"

    def __init__(self, lhs: SSAValue, rhs: SSAValue, result_type: Attribute, params: dict[str, Attribute]):
        super().__init__(operands=[lhs, rhs], result_types=[result_type], attributes=dict(params))

    def primitive_params(self) -> dict[str, Attribute]:
        return dict(self.attributes)

    def verify_(self) -> None:
        key = jlax._params_key(self.primitive_params())
        expected = jlax._infer_types(self.name, self.PRIMITIVE, self.OPTIONAL_PARAMS, key,
                                     (self.lhs.type, self.rhs.type))
        if isinstance(expected, str):
            raise VerifyException(f"{self.name}: {expected}")
        if shape_dtype(expected[0])[0] != shape_dtype(self.result.type)[0]:
            raise VerifyException(f"{self.name}: result shape does not match dot_general of the operands")


JQuant = Dialect("jquant", [QuantizeOp, DequantizeOp, UpcastOp, DynamicDotOp, DynamicConvOp, DynamicActDotOp,
                            QDotOp, QConvOp], [])
