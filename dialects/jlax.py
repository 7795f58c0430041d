"""``jlax``: the tensor-level dialect, one op per jax.lax primitive.

An IR dump reads like a jaxpr: ``%2 = jlax.dot_general %0, %1 {dimension_numbers = ...}``.
Each op *is* its jax primitive: parameters are attributes (see ``params``), and the verifier
checks result types with the primitive's own shape rule, so the IR can never disagree with
jax about a shape or a dtype. Besides the primitive ops the dialect has:

* ``jlax.weight @name``: a reference to an array in the model's WeightStore (out of line,
  like MLIR's ``dense_resource``), so dumps stay readable at any model size;
* ``jlax.constant``: a small inline constant (literals, shapes, tiny tables);
* ``jlax.cond`` / ``jlax.while`` / ``jlax.scan``: control flow holding regions (scf-style),
  terminated by ``jlax.yield``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np
from xdsl.dialects.builtin import (
    I1,
    I64,
    BytesAttr,
    DenseIntOrFPElementsAttr,
    IntegerAttr,
    SymbolRefAttr,
    TensorType,
)
from xdsl.ir import Attribute, Dialect, Operation, Region, SSAValue
from xdsl.irdl import (
    AnyAttr,
    IRDLOperation,
    ParamAttrConstraint,
    VarConstraint,
    attr_def,
    irdl_op_definition,
    prop_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
    var_region_def,
    var_result_def,
)
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.traits import ConstantLike, IsTerminator, Pure
from xdsl.utils.exceptions import VerifyException

from jaxlite.dialects import dims
from jaxlite.dialects import params as P
from jaxlite.dialects.primitive import MATMUL_OPTIONAL, PrimitiveOp
from jaxlite.dialects.types import KeyType, dtype_of, shape_dtype, tensor_type

# ---------------------------------------------------------------------------------------
# The supported primitives. Value: parameters that may be None and are then left out of the
# IR (they are restored as None when the op is evaluated), keeping dumps short.
_ACC = ("accuracy",)
ELEMENTWISE_UNARY: dict[str, tuple[str, ...]] = {
    **{n: () for n in (
        "neg", "sign", "floor", "ceil", "is_finite", "abs", "not", "erf", "erfc", "erf_inv",
        "lgamma", "digamma", "square", "population_count", "clz", "real", "imag", "conj",
        "bessel_i0e", "bessel_i1e", "stop_gradient", "copy", "round", "integer_pow",
        "reduce_precision", "convert_element_type", "bitcast_convert_type",
    )},
    **{n: _ACC for n in (
        "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan",
        "sqrt", "rsqrt", "cbrt",
    )},
    "asin": (), "acos": (), "atan": (), "sinh": (), "cosh": (), "asinh": (), "acosh": (),
    "atanh": (),
}
ELEMENTWISE_UNARY["convert_element_type"] = ("sharding",)
ELEMENTWISE_BINARY: dict[str, tuple[str, ...]] = {
    **{n: () for n in (
        "add", "sub", "div", "rem", "pow", "max", "min", "atan2", "nextafter", "and", "or",
        "xor", "shift_left", "shift_right_logical", "shift_right_arithmetic", "eq", "ne",
        "lt", "le", "gt", "ge", "igamma", "igammac", "complex", "eq_to", "lt_to", "le_to",
        "polygamma", "zeta", "random_gamma_grad",
    )},
    "mul": ("out_dtype",),
}
STRUCTURAL: dict[str, tuple[str, ...]] = {
    "select_n": (), "clamp": (),
    **MATMUL_OPTIONAL,
    "reduce_sum": ("out_sharding",), "reduce_max": (), "reduce_min": (), "reduce_prod": (),
    "reduce_and": (), "reduce_or": (), "reduce_xor": (),
    "argmax": (), "argmin": (),
    "reduce_window_sum": (), "reduce_window_max": (), "reduce_window_min": (),
    "cumsum": (), "cumprod": (), "cummax": (), "cummin": (), "cumlogsumexp": (),
    "broadcast_in_dim": ("sharding",), "reshape": ("dimensions", "sharding"),
    "squeeze": (), "transpose": (), "rev": (), "slice": ("strides",),
    "dynamic_slice": (), "dynamic_update_slice": (), "gather": ("fill_value",),
    "concatenate": (), "stack": (), "unstack": (), "tile": (), "pad": (), "iota": ("sharding",), "sort": (), "top_k": (),
    "split": (), "scatter": (), "scatter-add": (), "scatter-sub": (), "scatter-mul": (),
    "scatter-min": (), "scatter-max": (), "optimization_barrier": (),
    "approx_top_k": (), "regularized_incomplete_beta": (),
    # linear algebra (jnp.linalg / jax.scipy.linalg)
    "cholesky": (), "lu": (), "qr": ("use_magma",), "eigh": ("subset_by_index", "algorithm"),
    "svd": ("subset_by_index", "algorithm"), "triangular_solve": (), "lu_pivots_to_permutation": (),
    # lax.platform_dependent: which branch to take is decided where the program runs
    "platform_index": (),
    # typed PRNG keys (jax.random.key / PRNGKey): tensors of !jlax.key<impl>
    "random_seed": (), "random_bits": (), "random_split": (), "random_fold_in": (),
    "random_wrap": (), "random_unwrap": (), "threefry2x32": (),
}
SUPPORTED: dict[str, tuple[str, ...]] = {**ELEMENTWISE_UNARY, **ELEMENTWISE_BINARY, **STRUCTURAL}

# Parameters the frontend drops because they are jaxprs the op re-derives (scatter's
# combiner is implied by the op's name).
DROPPED_PARAMS: dict[str, tuple[str, ...]] = {
    n: ("update_jaxpr", "update_consts")
    for n in ("scatter", "scatter-add", "scatter-sub", "scatter-mul", "scatter-min", "scatter-max")
}


def op_name(primitive: str) -> str:
    return "jlax." + primitive.replace("-", "_")


class LaxOp(PrimitiveOp):
    """Abstract base of the ops that mirror one jax primitive each."""

    inputs = var_operand_def(TensorType)
    outputs = var_result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$inputs attr-dict `:` functional-type($inputs, $outputs)"

    def __init__(self, inputs: Sequence[SSAValue | Operation], result_types: Sequence[Attribute],
                 params: dict[str, Attribute] | None = None):
        super().__init__(operands=[list(inputs)], result_types=[list(result_types)],
                         attributes=params or {})

    @classmethod
    def create_from_params(cls, inputs, result_types, params: dict[str, Any]) -> LaxOp:
        """Build from Python parameter values (as found on a jaxpr equation)."""
        attrs = {}
        for k, v in params.items():
            if k in DROPPED_PARAMS.get(cls.PRIMITIVE, ()):
                continue
            if (v is None or P.is_sharding(v)) and k in cls.OPTIONAL_PARAMS:
                continue
            attrs[k] = P.encode(v)
        return cls(inputs, result_types, attrs)

    def evaluate(self, *args) -> list:
        """What the op computes: its jax primitive, applied (always a list)."""
        return self.bind(*args)

    def verify_(self) -> None:
        self.verify_primitive([o.type for o in self.operands], [r.type for r in self.results])


def _make_op_class(primitive: str, optional: tuple[str, ...]) -> type[LaxOp]:
    cls_name = "".join(p.capitalize() for p in primitive.replace("-", "_").split("_")) + "Op"
    cls = type(cls_name, (LaxOp,), {
        "name": op_name(primitive),
        "PRIMITIVE": primitive,
        "OPTIONAL_PARAMS": optional,
        "__module__": __name__,
        "__annotations__": {"PRIMITIVE": ClassVar[str], "OPTIONAL_PARAMS": ClassVar[tuple[str, ...]]},
        "__doc__": f"``lax.{primitive}``: the jax primitive of that name.",
    })
    return irdl_op_definition(cls)


PRIMITIVE_OPS: dict[str, type[LaxOp]] = {p: _make_op_class(p, o) for p, o in SUPPORTED.items()}
OPS_BY_NAME: dict[str, type[LaxOp]] = {c.name: c for c in PRIMITIVE_OPS.values()}


# ---------------------------------------------------------------------------------------
# Weights, constants, control flow.


@irdl_op_definition
class WeightOp(IRDLOperation):
    """An array of the model's WeightStore, by name (never inlined into the IR)."""

    name = "jlax.weight"
    ref = prop_def(SymbolRefAttr)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$ref attr-dict `:` type($result)"

    def __init__(self, ref: str, type: TensorType):
        super().__init__(properties={"ref": SymbolRefAttr(ref)}, result_types=[type])

    @property
    def weight_name(self) -> str:
        return self.ref.root_reference.data


# Arrays up to this many elements are written inline as jlax.constant (literals, shapes,
# tiny tables); bigger ones are weights, out of line.
INLINE_CONSTANT_ELEMENTS = 64


@irdl_op_definition
class ConstantOp(IRDLOperation):
    """A small inline constant: jaxpr literals, shapes and tiny tables."""

    name = "jlax.constant"
    T: ClassVar = VarConstraint("T", TensorType.constr())
    value = prop_def(ParamAttrConstraint(DenseIntOrFPElementsAttr, (T, AnyAttr())))
    result = result_def(T)
    traits = traits_def(Pure(), ConstantLike())

    # Syntax: ``jlax.constant dense<...> : tensor<..>``. Where xDSL would write a float
    # element in hex (nan, inf, some large values), which its own parser then misreads as an
    # integer, we write ``jlax.constant hex "0x<little-endian bytes>" : tensor<..>``.
    def print(self, printer: Printer) -> None:
        text = io.StringIO()
        Printer(stream=text).print_attribute(self.value)
        rendered = text.getvalue()
        if "0x" in rendered and dtype_of(self.value.type.get_element_type()).kind == "f":
            arr = np.ascontiguousarray(self.to_array())
            printer.print_string(f' hex "0x{arr.tobytes().hex().upper()}" : ')
            printer.print_attribute(self.value.type)
        else:
            printer.print_string(" " + rendered)

    @classmethod
    def parse(cls, parser: Parser) -> ConstantOp:
        if parser.parse_optional_keyword("hex") is not None:
            text = parser.parse_str_literal()
            parser.parse_punctuation(":")
            ty = parser.parse_type()
            if not isinstance(ty, TensorType) or not text.startswith("0x"):
                parser.raise_error("expected a hex string and a tensor type")
            shape, dtype = shape_dtype(ty)
            try:
                arr = np.frombuffer(bytes.fromhex(text[2:]), dtype)
            except ValueError:
                parser.raise_error("malformed hex constant")
            if arr.size != int(np.prod(shape)):
                parser.raise_error("hex constant size does not match its type")
            return ConstantOp.from_array(arr.reshape(shape))
        value = parser.parse_attribute()
        if not isinstance(value, DenseIntOrFPElementsAttr):
            parser.raise_error("expected a dense constant")
        return ConstantOp(value)

    def __init__(self, value: DenseIntOrFPElementsAttr):
        super().__init__(properties={"value": value}, result_types=[value.type])

    @staticmethod
    def from_array(array: np.ndarray) -> ConstantOp:
        array = np.asarray(array)
        ty = tensor_type(array.shape, array.dtype)
        flat = array.reshape(-1)
        if array.dtype == np.bool_:
            return ConstantOp(DenseIntOrFPElementsAttr.from_list(ty, [bool(v) for v in flat]))
        # raw little-endian bytes: exact for every value (nan, inf, bf16), no Python floats
        return ConstantOp(DenseIntOrFPElementsAttr(ty, BytesAttr(np.ascontiguousarray(flat).tobytes())))

    def to_array(self) -> np.ndarray:
        return constant_to_array(self.value)

    def verify_(self) -> None:
        if self.value.type != self.result.type:
            raise VerifyException("jlax.constant: value type differs from result type")


def constant_to_array(value: DenseIntOrFPElementsAttr) -> np.ndarray:
    shape, dtype = shape_dtype(value.type)
    raw = value.data.data
    if dtype == np.bool_:
        arr = np.frombuffer(raw, np.uint8) != 0
    else:
        arr = np.frombuffer(raw, dtype)
    size = int(np.prod(shape)) if shape else 1
    if arr.size == 1 and size != 1:  # splat
        arr = np.broadcast_to(arr, (size,))
    return np.array(arr.reshape(shape))


@irdl_op_definition
class YieldOp(IRDLOperation):
    """Terminates a control-flow region, passing its values out."""

    name = "jlax.yield"
    values = var_operand_def(TensorType)
    traits = traits_def(IsTerminator())
    assembly_format = "($values^ `:` type($values))? attr-dict"

    def __init__(self, values: Sequence[SSAValue | Operation]):
        super().__init__(operands=[list(values)])


def _block_types(region: Region) -> tuple[tuple, tuple]:
    block = region.block
    term = block.last_op
    if not isinstance(term, YieldOp):
        raise VerifyException("region must end with jlax.yield")
    return tuple(a.type for a in block.args), tuple(v.type for v in term.values)


class RegionOp(IRDLOperation):
    """Base of control-flow ops: inputs, results, and integer parameters as typed attributes."""

    inputs = var_operand_def(TensorType)
    outputs = var_result_def(TensorType)
    traits = traits_def(Pure())


def _int(attr: IntegerAttr) -> int:
    return attr.value.data


@irdl_op_definition
class DimAsValueOp(IRDLOperation):
    """A dimension's size as a scalar (jax's ``dim_as_value``: ``x.shape[0]`` used as a
    number, as in a mean over a symbolic batch). Evaluates once the dimension is concrete
    (in a specialized module); a symbolic one has no value before run time."""

    name = "jlax.dim_as_value"
    dim = prop_def(IntegerAttr[I64] | dims.DimAttr)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$dim attr-dict `:` type($result)"

    def __init__(self, dim, type: TensorType):
        super().__init__(properties={"dim": P.encode(dim)}, result_types=[type])

    def verify_(self) -> None:
        shape, dtype = shape_dtype(self.result.type)
        if shape or dtype.kind not in "iu":
            raise VerifyException(f"jlax.dim_as_value: the result must be an integer scalar, got {self.result.type}")

    def evaluate(self) -> list:
        if isinstance(self.dim, dims.DimAttr):
            raise ValueError(f"jlax.dim_as_value: {self.dim.expr.data} has no value until the model runs at a shape")
        return [jnp.asarray(_int(self.dim), dtype=shape_dtype(self.result.type)[1])]


@irdl_op_definition
class CondOp(RegionOp):
    """``lax.cond``/``lax.switch``: run branch ``index`` (clamped) on the operands.

    Operands: the i32 index, then the branch operands. One region per branch.
    """

    name = "jlax.cond"
    branches = var_region_def()

    def __init__(self, index: SSAValue, operands: Sequence[SSAValue], result_types, branches):
        super().__init__(operands=[[index, *operands]], result_types=[list(result_types)],
                         regions=[list(branches)])

    def verify_(self) -> None:
        if not self.inputs or shape_dtype(self.inputs[0].type)[0] != ():
            raise VerifyException("jlax.cond: the first operand must be a scalar index")
        ins = tuple(o.type for o in self.inputs[1:])
        outs = tuple(r.type for r in self.outputs)
        if not self.branches:
            raise VerifyException("jlax.cond: needs at least one branch")
        for i, region in enumerate(self.branches):
            args, yields = _block_types(region)
            if args != ins or yields != outs:
                raise VerifyException(f"jlax.cond: branch {i} has type {args} -> {yields}, "
                                      f"expected {ins} -> {outs}")


@irdl_op_definition
class WhileOp(RegionOp):
    """``lax.while_loop``. Operands: cond consts, body consts, initial carry.

    Attributes ``cond_nconsts``/``body_nconsts`` split them; the ``cond`` region maps
    (cond consts, carry) to a scalar i1, the ``body`` region (body consts, carry) to carry.
    """

    name = "jlax.while"
    cond = region_def()
    body = region_def()
    cond_nconsts_attr = attr_def(IntegerAttr[I64], attr_name="cond_nconsts")
    body_nconsts_attr = attr_def(IntegerAttr[I64], attr_name="body_nconsts")

    def __init__(self, operands, result_types, cond: Region, body: Region, cond_nconsts: int,
                 body_nconsts: int):
        super().__init__(operands=[list(operands)], result_types=[list(result_types)],
                         regions=[cond, body],
                         attributes={"cond_nconsts": P.encode(cond_nconsts),
                                     "body_nconsts": P.encode(body_nconsts)})

    @property
    def cond_nconsts(self) -> int:
        return _int(self.cond_nconsts_attr)

    @property
    def body_nconsts(self) -> int:
        return _int(self.body_nconsts_attr)

    def verify_(self) -> None:
        nc, nb = self.cond_nconsts, self.body_nconsts
        types = tuple(o.type for o in self.inputs)
        if len(types) < nc + nb:
            raise VerifyException("jlax.while: fewer operands than constants")
        carry = types[nc + nb:]
        if tuple(r.type for r in self.outputs) != carry:
            raise VerifyException("jlax.while: result types differ from the carry types")
        cargs, cyield = _block_types(self.cond)
        if cargs != types[:nc] + carry or len(cyield) != 1 or shape_dtype(cyield[0]) != ((), np.dtype(bool)):
            raise VerifyException("jlax.cond region must map (cond consts, carry) to a scalar i1")
        bargs, byield = _block_types(self.body)
        if bargs != types[nc:nc + nb] + carry or byield != carry:
            raise VerifyException("jlax.while: body region must map (body consts, carry) to carry")


@irdl_op_definition
class ScanOp(RegionOp):
    """``lax.scan``. Operands: consts, initial carry, xs (scanned along axis 0).

    Results: final carry, then ys stacked along a new axis 0. Attributes: num_consts,
    num_carry, length, reverse, unroll.
    """

    name = "jlax.scan"
    body = region_def()
    num_consts_attr = attr_def(IntegerAttr[I64], attr_name="num_consts")
    num_carry_attr = attr_def(IntegerAttr[I64], attr_name="num_carry")
    length_attr = attr_def(IntegerAttr[I64] | dims.DimAttr, attr_name="length")  # symbolic: a scan over b rows
    reverse_attr = attr_def(IntegerAttr[I1], attr_name="reverse")
    unroll_attr = attr_def(IntegerAttr[I64], attr_name="unroll")

    def __init__(self, operands, result_types, body: Region, *, num_consts: int, num_carry: int,
                 length: int, reverse: bool, unroll: int):
        super().__init__(operands=[list(operands)], result_types=[list(result_types)],
                         regions=[body],
                         attributes={"num_consts": P.encode(num_consts),
                                     "num_carry": P.encode(num_carry),
                                     "length": P.encode(length), "reverse": P.encode(reverse),
                                     "unroll": P.encode(unroll)})

    @property
    def num_consts(self) -> int:
        return _int(self.num_consts_attr)

    @property
    def num_carry(self) -> int:
        return _int(self.num_carry_attr)

    @property
    def length(self) -> int:
        """The number of steps; a jax symbolic dimension when the scanned axis is symbolic."""
        attr = self.length_attr
        return attr.dim if isinstance(attr, dims.DimAttr) else _int(attr)

    @property
    def reverse(self) -> bool:
        return bool(_int(self.reverse_attr))

    @property
    def unroll(self) -> int:
        return _int(self.unroll_attr)

    def verify_(self) -> None:
        nconst, ncarry, length = self.num_consts, self.num_carry, self.length
        types = tuple(o.type for o in self.inputs)
        consts, carry, xs = types[:nconst], types[nconst:nconst + ncarry], types[nconst + ncarry:]
        x_slices = []
        for t in xs:
            shape, dtype = shape_dtype(t)
            if not shape or shape[0] != length:
                raise VerifyException(f"jlax.scan: scanned operand {t} does not have leading axis {length}")
            x_slices.append(tensor_type(shape[1:], dtype))
        args, yields = _block_types(self.body)
        if args != consts + carry + tuple(x_slices):
            raise VerifyException("jlax.scan: body arguments must be (consts, carry, x slices)")
        if yields[:ncarry] != carry:
            raise VerifyException("jlax.scan: body must yield the carry first")
        outs = tuple(r.type for r in self.outputs)
        ys = tuple(tensor_type((length, *shape_dtype(t)[0]), shape_dtype(t)[1]) for t in yields[ncarry:])
        if outs != carry + ys:
            raise VerifyException("jlax.scan: result types must be (carry, stacked ys)")


JLax = Dialect(
    "jlax",
    [WeightOp, ConstantOp, YieldOp, CondOp, WhileOp, ScanOp, DimAsValueOp, *PRIMITIVE_OPS.values()],
    [P.EnumAttr, P.StructAttr, KeyType, dims.DimAttr],
)

__all__ = [
    "JLax", "LaxOp", "WeightOp", "ConstantOp", "YieldOp", "CondOp", "WhileOp", "ScanOp", "DimAsValueOp",
    "PRIMITIVE_OPS", "OPS_BY_NAME", "SUPPORTED", "constant_to_array", "op_name",
]
