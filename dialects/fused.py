"""``jfuse``: ops the runtime executes as one kernel.

``jfuse.dot`` and ``jfuse.conv`` (dot/conv + bias + activation) carry the attributes of the
jlax op they replace (``dot_general`` / ``conv_general_dilated``), an optional bias operand
(added with the same broadcasting a jaxpr ``add`` uses) and an ``activation`` property
(``#jfuse<activation relu>``). Quantized kernels later reuse the same epilogue.

``jfuse.layer_norm`` and ``jfuse.softmax`` work on the rows of the last axis: what flax /
jax.nn trace into 8-16 elementwise and reduction ops (each its own XLA fusion or worse)
is one pass over the rows here, and one native call on CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from xdsl.dialects.builtin import Float64Type, FloatAttr, TensorType
from xdsl.dialects.utils import EnumAttribute
from xdsl.ir import Attribute, Dialect, SpacedOpaqueSyntaxAttribute, SSAValue
from xdsl.irdl import (
    AttrSizedOperandSegments,
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_operand_def,
    prop_def,
    result_def,
    traits_def,
)
from xdsl.traits import Pure
from xdsl.utils.exceptions import VerifyException
from xdsl.utils.str_enum import StrEnum

from jaxlite.dialects.primitive import PrimitiveOp, dot_and_conv
from jaxlite.dialects.types import shape_dtype


class Activation(StrEnum):
    NONE = "none"
    RELU = "relu"
    RELU6 = "relu6"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    SILU = "silu"
    GELU_TANH = "gelu_tanh"
    GELU_ERF = "gelu_erf"


@irdl_attr_definition
class ActivationAttr(EnumAttribute[Activation], SpacedOpaqueSyntaxAttribute):
    """``#jfuse<activation relu>``: the activation a fused or quantized op applies last."""

    name = "jfuse.activation"


# name -> function of the pre-activation value; each is exactly the op sequence jax.nn traces
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "none": lambda y: y,
    "relu": lambda y: lax.max(y, jnp.zeros((), y.dtype)),
    "relu6": lambda y: lax.min(lax.max(y, jnp.zeros((), y.dtype)), jnp.full((), 6, y.dtype)),
    "sigmoid": lax.logistic,
    "tanh": lax.tanh,
    "silu": lambda y: y * lax.logistic(y),
    "gelu_tanh": lambda y: jax.nn.gelu(y, approximate=True),
    "gelu_erf": lambda y: jax.nn.gelu(y, approximate=False),
}


class FusedOp(PrimitiveOp):
    """Base: lhs, rhs, optional bias -> activation(primitive(lhs, rhs) + bias)."""

    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    bias = opt_operand_def(TensorType)
    result = result_def(TensorType)
    activation_attr = prop_def(ActivationAttr, prop_name="activation")
    traits = traits_def(Pure())
    irdl_options = (AttrSizedOperandSegments(as_property=True), ParsePropInAttrDict())
    assembly_format = ("$lhs `,` $rhs (`bias` $bias^)? attr-dict `:` type($lhs) `,` type($rhs) "
                       "(`,` type($bias)^)? `->` type($result)")

    def __init__(self, lhs: SSAValue, rhs: SSAValue, bias: SSAValue | None, result_type: Attribute,
                 params: dict[str, Attribute], activation: str = "none"):
        super().__init__(operands=[lhs, rhs, bias], result_types=[result_type], attributes=dict(params),
                         properties={"activation": ActivationAttr(Activation(activation))})

    @property
    def activation(self) -> str:
        return self.activation_attr.data.value

    def verify_(self) -> None:
        self.verify_primitive((self.lhs.type, self.rhs.type), (self.result.type,))
        if self.bias is not None:
            out_shape, out_dtype = shape_dtype(self.result.type)
            b_shape, b_dtype = shape_dtype(self.bias.type)
            ok = b_dtype == out_dtype and (b_shape == () or (
                len(b_shape) == len(out_shape) and all(b in (1, o) for b, o in zip(b_shape, out_shape, strict=True))))
            if not ok:
                raise VerifyException(f"{self.name}: bias {self.bias.type} does not broadcast to {self.result.type}")

    def evaluate(self, lhs, rhs, bias=None) -> list:
        return [fused_epilogue(self.bind(lhs, rhs)[0], bias, self.activation)]


def fused_epilogue(y, bias, activation: str):
    if bias is not None:
        y = y + bias
    return ACTIVATIONS[activation](y)


FusedDotOp, FusedConvOp = dot_and_conv(
    FusedOp, {"dot_general": ("FusedDotOp", "jfuse.dot"), "conv_general_dilated": ("FusedConvOp", "jfuse.conv")},
    "``activation({}(lhs, rhs) + bias)``.")


def layer_norm(x, scale=None, bias=None, *, epsilon: float):
    """``(x - mean) * rsqrt(var + epsilon) * scale + bias`` over the last axis (the variance
    of the centred values: flax's default ``E[x^2] - E[x]^2`` agrees to rounding)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(lax.square(centred), axis=-1, keepdims=True)
    y = centred * lax.rsqrt(var + jnp.asarray(epsilon, x.dtype))
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


def softmax(x):
    """``exp(x - max) / sum(exp(x - max))`` over the last axis, as jax.nn.softmax."""
    m = lax.max(jnp.max(x, axis=-1, keepdims=True), jnp.full((), -jnp.inf, x.dtype))
    e = jnp.exp(x - m)
    return e / jnp.sum(e, axis=-1, keepdims=True)


def is_row_vector(shape: tuple[int, ...], x_shape: tuple[int, ...]) -> bool:
    """A shape that broadcasts against x and varies at most along its last axis."""
    aligned = (1,) * (len(x_shape) - len(shape)) + tuple(shape)
    return len(aligned) == len(x_shape) and all(s == 1 for s in aligned[:-1]) and aligned[-1] in (1, x_shape[-1])


def _check_row_vector(op: IRDLOperation, value: SSAValue | None, what: str) -> None:
    """A scale/bias of a row op: same dtype, varies at most along the last axis."""
    if value is None:
        return
    x_shape, x_dtype = shape_dtype(op.operands[0].type)
    shape, dtype = shape_dtype(value.type)
    if dtype != x_dtype or not is_row_vector(shape, x_shape):
        raise VerifyException(f"{op.name}: {what} {value.type} must be a vector along the last axis of "
                              f"{op.operands[0].type}")


def _check_float_rows(op: IRDLOperation) -> None:
    x_shape, x_dtype = shape_dtype(op.operands[0].type)
    if x_dtype.kind != "f" or not x_shape:
        raise VerifyException(f"{op.name}: takes a float tensor of rank >= 1, got {op.operands[0].type}")
    if op.results[0].type != op.operands[0].type:
        raise VerifyException(f"{op.name}: result type {op.results[0].type} must be the input's "
                              f"{op.operands[0].type}")


@irdl_op_definition
class LayerNormOp(IRDLOperation):
    """Layer normalization over the last axis, with optional scale and bias vectors."""

    name = "jfuse.layer_norm"
    input = operand_def(TensorType)
    scale = opt_operand_def(TensorType)
    bias = opt_operand_def(TensorType)
    result = result_def(TensorType)
    epsilon_attr = prop_def(FloatAttr[Float64Type], prop_name="epsilon")
    traits = traits_def(Pure())
    irdl_options = (AttrSizedOperandSegments(as_property=True), ParsePropInAttrDict())
    assembly_format = ("$input (`scale` $scale^)? (`bias` $bias^)? attr-dict `:` type($input) "
                       "(`,` type($scale)^)? (`,` type($bias)^)? `->` type($result)")

    def __init__(self, x: SSAValue, scale: SSAValue | None, bias: SSAValue | None, epsilon: float):
        super().__init__(operands=[x, scale, bias], result_types=[x.type],
                         properties={"epsilon": FloatAttr(float(epsilon), Float64Type())})

    @property
    def epsilon(self) -> float:
        return float(self.epsilon_attr.value.data)

    def verify_(self) -> None:
        if not self.epsilon >= 0:
            raise VerifyException(f"{self.name}: epsilon must be >= 0, got {self.epsilon}")
        _check_float_rows(self)
        _check_row_vector(self, self.scale, "scale")
        _check_row_vector(self, self.bias, "bias")

    def vectors(self, values) -> tuple:
        """(scale, bias) from the operand values after x (either may be absent)."""
        return (values[0] if self.scale is not None else None,
                values[-1] if self.bias is not None else None)

    def evaluate(self, x, *values):
        return [layer_norm(x, *self.vectors(values), epsilon=self.epsilon)]


@irdl_op_definition
class SoftmaxOp(IRDLOperation):
    """Softmax over the last axis."""

    name = "jfuse.softmax"
    input = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$input attr-dict `:` type($input) `->` type($result)"

    def __init__(self, x: SSAValue):
        super().__init__(operands=[x], result_types=[x.type])

    def verify_(self) -> None:
        _check_float_rows(self)

    def evaluate(self, x):
        return [softmax(x)]


ROW_OPS = (LayerNormOp, SoftmaxOp)
JFuse = Dialect("jfuse", [FusedDotOp, FusedConvOp, LayerNormOp, SoftmaxOp], [ActivationAttr])
FUSED_FOR: dict[str, type[FusedOp]] = {"dot_general": FusedDotOp, "conv_general_dilated": FusedConvOp}
