"""The one mapping between numpy/jax dtypes and xDSL element types.

Signed integers use MLIR's signless types (``i32``), unsigned ones ``ui32``, bool ``i1``;
every value in the IR is a ``tensor<...>`` (scalars are rank-0 tensors), as in a jaxpr.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    IntegerType,
    Signedness,
    StringAttr,
    TensorType,
    bf16,
    f16,
    f32,
    f64,
)
from xdsl.ir import Attribute, ParametrizedAttribute, TypeAttribute
from xdsl.irdl import irdl_attr_definition

from jaxlite.dialects import dims


@irdl_attr_definition
class KeyType(ParametrizedAttribute, TypeAttribute):
    """``!jlax.key<"threefry2x32">``: element type of jax's typed PRNG key arrays."""

    name = "jlax.key"
    impl: StringAttr

    def __init__(self, impl: str):
        super().__init__(StringAttr(impl))


def _prng():
    from jax._src.random import prng  # jax's typed-key machinery (KeyTy, implementations)

    return prng


def is_key_dtype(dtype) -> bool:
    return type(dtype).__name__ == "KeyTy"

_DTYPE_TO_TYPE: dict[np.dtype, Attribute] = {
    np.dtype(np.float32): f32,
    np.dtype(np.float16): f16,
    np.dtype(ml_dtypes.bfloat16): bf16,
    np.dtype(np.float64): f64,
    np.dtype(np.bool_): IntegerType(1),
    np.dtype(np.int8): IntegerType(8),
    np.dtype(np.int16): IntegerType(16),
    np.dtype(np.int32): IntegerType(32),
    np.dtype(np.int64): IntegerType(64),
    np.dtype(np.uint8): IntegerType(8, Signedness.UNSIGNED),
    np.dtype(np.uint16): IntegerType(16, Signedness.UNSIGNED),
    np.dtype(np.uint32): IntegerType(32, Signedness.UNSIGNED),
    np.dtype(np.uint64): IntegerType(64, Signedness.UNSIGNED),
}
_TYPE_TO_DTYPE: dict[Attribute, np.dtype] = {t: d for d, t in _DTYPE_TO_TYPE.items()}

FLOAT_TYPES = (Float16Type, BFloat16Type, Float32Type, Float64Type)


def is_supported_dtype(dtype) -> bool:
    if is_key_dtype(dtype):
        return dtype._impl.name in _prng().prngs
    try:
        return np.dtype(dtype) in _DTYPE_TO_TYPE
    except TypeError:
        return False


def element_type(dtype) -> Attribute:
    """xDSL element type of a numpy/jax dtype; TypeError for dtypes the IR cannot hold."""
    if is_key_dtype(dtype):
        return KeyType(dtype._impl.name)
    try:
        return _DTYPE_TO_TYPE[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise TypeError(f"dtype {dtype} has no jaxlite IR type") from None


def dtype_of(element: Attribute) -> np.dtype:
    if isinstance(element, KeyType):
        prng = _prng()
        if element.impl.data not in prng.prngs:
            raise TypeError(f"unknown PRNG implementation {element.impl.data!r}")
        return prng.KeyTy(prng.prngs[element.impl.data])
    try:
        return _TYPE_TO_DTYPE[element]
    except KeyError:
        raise TypeError(f"IR element type {element} has no numpy dtype") from None


def tensor_type(shape, dtype) -> TensorType:
    """The tensor type of this shape (ints, or symbolic dimensions: see ``dims``) and dtype."""
    if dims.is_static_shape(shape):
        return TensorType(element_type(dtype), [int(d) for d in shape])
    return TensorType(element_type(dtype), [DYNAMIC_INDEX if dims.is_symbolic(d) else int(d) for d in shape],
                      dims.encoding_of(shape))


def shape_dtype(t: Attribute) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of a ``tensor<...>`` type; a symbolic dimension is a jax dimension
    expression (``dims``)."""
    if not isinstance(t, TensorType):
        raise TypeError(f"expected a tensor type, got {t}")
    return dims.tensor_dims(t), dtype_of(t.get_element_type())


def dtype_name(dtype) -> str:
    return np.dtype(dtype).name


def parse_dtype(name: str) -> np.dtype:
    """Inverse of dtype_name for the dtypes the IR supports (bfloat16 included)."""
    for d in _DTYPE_TO_TYPE:
        if d.name == name:
            return d
    raise TypeError(f"unknown dtype {name!r}")
