"""Primitive parameters as xDSL attributes, and back.

A jaxpr equation carries Python parameters (ints, tuples, dtypes, enums such as
``GatherScatterMode``, structs such as ``ConvDimensionNumbers``). The ``jlax`` ops keep them
as attributes so an IR dump reads like the jaxpr, and the runtime decodes them to re-bind
the very same jax primitive. Decoding only ever builds the types registered below: a model
file cannot make the decoder construct anything else.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np
from jax import lax
from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseArrayBase,
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    StringAttr,
    UnitAttr,
    f64,
    i1,
    i64,
)
from xdsl.ir import Attribute, ParametrizedAttribute, TypeAttribute
from xdsl.irdl import irdl_attr_definition
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

from jaxlite.dialects import dims
from jaxlite.dialects.types import dtype_of, element_type

ENUMS: dict[str, type[enum.Enum]] = {
    e.__name__: e for e in (lax.Precision, lax.GatherScatterMode, lax.RoundingMethod,
                            lax.linalg.SvdAlgorithm, lax.linalg.EighImplementation)
}
STRUCTS: dict[str, type] = {
    s.__name__: s
    for s in (lax.ConvDimensionNumbers, lax.GatherDimensionNumbers, lax.ScatterDimensionNumbers)
}


def _members(enum_name: str) -> dict:
    """Members of a registered enum; PRNGImpl (the implementation of a typed PRNG key) is
    treated as an enum of jax's registered implementations."""
    if enum_name == "PRNGImpl":
        from jax._src.random import prng

        return prng.prngs
    e = ENUMS.get(enum_name)
    return dict(e.__members__) if e is not None else {}


class UnencodableParam(TypeError):
    """A primitive parameter of a type the IR has no attribute for."""


@irdl_attr_definition
class EnumAttr(ParametrizedAttribute):
    """``#jlax.enum<GatherScatterMode.CLIP>``: a member of one of the registered jax enums."""

    name = "jlax.enum"
    enum_name: StringAttr
    member: StringAttr

    def __init__(self, enum_name: str, member: str):
        super().__init__(StringAttr(enum_name), StringAttr(member))

    def verify(self) -> None:
        if self.member.data not in _members(self.enum_name.data):
            raise VerifyException(f"unknown enum value {self.enum_name.data}.{self.member.data}")

    @classmethod
    def parse_parameters(cls, parser: AttrParser):
        with parser.in_angle_brackets():
            pos = parser.pos
            enum_name, dot, member = parser.parse_identifier().partition(".")
        if not dot:
            parser.raise_error("expected Enum.MEMBER", pos, parser.pos)
        return (StringAttr(enum_name), StringAttr(member))

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string(f"<{self.enum_name.data}.{self.member.data}>")


@irdl_attr_definition
class StructAttr(ParametrizedAttribute):
    """``#jlax.struct<ConvDimensionNumbers {lhs_spec = ..., ...}>``: a registered jax struct."""

    name = "jlax.struct"
    struct_name: StringAttr
    fields: DictionaryAttr

    def __init__(self, struct_name: str, values: dict[str, Attribute]):
        super().__init__(StringAttr(struct_name), DictionaryAttr(values))

    def verify(self) -> None:
        if self.struct_name.data not in STRUCTS:
            raise VerifyException(f"unknown struct {self.struct_name.data}")

    @classmethod
    def parse_parameters(cls, parser: AttrParser):
        with parser.in_angle_brackets():
            struct_name = parser.parse_identifier()
            values = parser.parse_attribute()
        if not isinstance(values, DictionaryAttr):
            parser.raise_error("expected a dictionary of struct fields")
        return (StringAttr(struct_name), values)

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string(f"<{self.struct_name.data} ")
        printer.print_attribute(self.fields)
        printer.print_string(">")


def is_sharding(value) -> bool:
    return any(c.__name__.endswith("Sharding") for c in type(value).__mro__)


def _struct_fields(value) -> dict[str, Any]:
    if hasattr(value, "_fields"):  # NamedTuple
        return dict(zip(value._fields, value, strict=True))
    if is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    raise UnencodableParam(f"cannot take the fields of {type(value).__name__}")


def encode(value: Any) -> Attribute:
    """A primitive parameter as an attribute (inverse: ``decode``)."""
    if value is None or is_sharding(value):
        # jaxlite programs run on one device: a sharding annotation means nothing there
        return UnitAttr()
    if isinstance(value, bool | np.bool_):
        return IntegerAttr(int(value), i1)
    if type(value).__name__ == "PRNGImpl":
        return EnumAttr("PRNGImpl", value.name)
    if isinstance(value, enum.Enum):
        if type(value).__name__ not in ENUMS:
            raise UnencodableParam(f"enum {type(value).__name__} is not supported")
        return EnumAttr(type(value).__name__, value.name)
    if isinstance(value, int | np.integer):
        return IntegerAttr(int(value), i64)
    if dims.is_symbolic(value):
        return dims.DimAttr(value)
    if isinstance(value, float | np.floating):
        return FloatAttr(float(value), f64)
    if isinstance(value, str):
        return StringAttr(value)
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        try:
            return element_type(value)
        except TypeError as e:
            raise UnencodableParam(str(e)) from None
    if type(value).__name__ in STRUCTS and isinstance(value, STRUCTS[type(value).__name__]):
        return StructAttr(type(value).__name__, {k: encode(v) for k, v in _struct_fields(value).items()})
    if isinstance(value, tuple | list):
        if all(isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_) for v in value):
            return DenseArrayBase.from_list(i64, [int(v) for v in value])
        return ArrayAttr([encode(v) for v in value])
    raise UnencodableParam(f"parameter value {value!r} of type {type(value).__name__}")


def decode(attr: Attribute) -> Any:
    """The Python value ``encode`` turned into ``attr``."""
    if isinstance(attr, UnitAttr):
        return None
    if isinstance(attr, IntegerAttr):
        if attr.type == i1:
            return bool(attr.value.data)
        return int(attr.value.data)
    if isinstance(attr, FloatAttr):
        return float(attr.value.data)
    if isinstance(attr, StringAttr):
        return attr.data
    if isinstance(attr, dims.DimAttr):
        return attr.dim
    if isinstance(attr, EnumAttr):
        return _members(attr.enum_name.data)[attr.member.data]
    if isinstance(attr, StructAttr):
        cls = STRUCTS[attr.struct_name.data]
        return cls(**{k: decode(v) for k, v in attr.fields.data.items()})
    if isinstance(attr, DenseArrayBase):
        return tuple(int(v) for v in attr.get_values())
    if isinstance(attr, ArrayAttr):
        return tuple(decode(a) for a in attr.data)
    if isinstance(attr, TypeAttribute | IntegerType):
        return dtype_of(attr)
    raise UnencodableParam(f"attribute {attr} is not a primitive parameter")


def decode_all(attributes: dict[str, Attribute], skip: Callable[[str], bool] = lambda _: False):
    return {k: decode(v) for k, v in attributes.items() if not skip(k)}
