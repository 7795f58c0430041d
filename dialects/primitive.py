"""Ops backed by a jax primitive: parameters, type inference, verification, evaluation.

Every op that computes what a jax primitive computes -- the ``jlax`` ops, the fused
dot/conv of ``jfuse``, the quantized dot/conv of ``jquant`` -- derives from ``PrimitiveOp``.
Its attributes are the primitive's parameters (decoded by ``params``); its result types
are whatever jax's own shape rule says, so the IR can never disagree with jax about a
shape or a dtype; ``bind`` applies the primitive (eagerly or inside a trace), which is
what constant folding and the runtime's XLA lowering both run. Inherent parameters of
the derived ops (an activation, a scale's axis) are typed properties, not attributes.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
from jax import lax
from jax._src import core as jax_core
from xdsl.ir import Attribute
from xdsl.irdl import IRDLOperation, irdl_op_definition
from xdsl.utils.exceptions import VerifyException

from jaxlite.dialects import params as P
from jaxlite.dialects.types import shape_dtype, tensor_type

# Parameters of the matmul primitives that may be None, then left out of the IR (restored
# as None when the op is evaluated), keeping dumps short.
MATMUL_OPTIONAL: dict[str, tuple[str, ...]] = {
    "dot_general": ("precision", "preferred_element_type", "out_sharding"),
    "conv_general_dilated": ("precision", "preferred_element_type", "out_sharding"),
}


def _find_primitives() -> dict[str, jax_core.Primitive]:
    import jax._src.lax as lax_pkg
    from jax._src import ad_util
    from jax._src.random import prng, threefry2x32

    modules = []
    for info in pkgutil.walk_packages(lax_pkg.__path__, "jax._src.lax."):
        try:
            modules.append(importlib.import_module(info.name))
        except Exception:  # optional backends (e.g. GPU-only modules)
            continue
    found: dict[str, jax_core.Primitive] = {}
    for mod in (*modules, ad_util, prng, threefry2x32):
        for v in vars(mod).values():
            if isinstance(v, jax_core.Primitive):
                found.setdefault(v.name, v)
    return found


@functools.cache
def primitives() -> dict[str, jax_core.Primitive]:
    """jax's primitive objects by name (looked up once, lazily)."""
    return _find_primitives()


def _scatter_kernel(fn: Callable) -> Callable[..., Any]:
    def kernel(operand, indices, updates, **params):
        return fn(operand, indices, updates, params["dimension_numbers"],
                  indices_are_sorted=params["indices_are_sorted"],
                  unique_indices=params["unique_indices"], mode=params["mode"])
    return kernel


# Primitives whose evaluation goes through a public lax function rather than bind.
_CUSTOM_EVAL: dict[str, Callable[..., Any]] = {
    "scatter": _scatter_kernel(lax.scatter),
    "scatter-add": _scatter_kernel(lax.scatter_add),
    "scatter-sub": _scatter_kernel(lax.scatter_sub),
    "scatter-mul": _scatter_kernel(lax.scatter_mul),
    "scatter-min": _scatter_kernel(lax.scatter_min),
    "scatter-max": _scatter_kernel(lax.scatter_max),
}


def _decoded(params_key: tuple, optional: tuple[str, ...]) -> dict[str, Any]:
    params = {k: None for k in optional}
    params.update({k: P.decode(v) for k, v in params_key})
    return params


@functools.lru_cache(maxsize=8192)
def _binder(primitive: str, params_key: tuple, optional: tuple[str, ...]) -> Callable[..., list]:
    params = _decoded(params_key, optional)
    if primitive in _CUSTOM_EVAL:
        fn = _CUSTOM_EVAL[primitive]
        return lambda *args: [fn(*args, **params)]
    prim = primitives()[primitive]

    def run_bind(*args):
        out = prim.bind(*args, **params)
        return list(out) if prim.multiple_results else [out]
    return run_bind


@functools.lru_cache(maxsize=16384)
def _inferred(primitive: str, params_key: tuple, optional: tuple[str, ...], in_types: tuple) -> tuple | str:
    """Result types by jax's own shape rule, or an error message."""
    try:
        avals = [jax.ShapeDtypeStruct(*shape_dtype(t)) for t in in_types]
        if primitive in _CUSTOM_EVAL:
            outs = jax.eval_shape(_binder(primitive, params_key, optional), *avals)
        else:
            prim = primitives()[primitive]
            shaped = [jax_core.ShapedArray(a.shape, a.dtype) for a in avals]
            out, _effects = prim.abstract_eval(*shaped, **_decoded(params_key, optional))
            outs = list(out) if prim.multiple_results else [out]
        return tuple(tensor_type(o.shape, o.dtype) for o in outs)
    except Exception as e:  # any shape-rule failure is an invalid op
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"invalid operands or attributes: {first}"


@dataclass(frozen=True)
class DotDims:
    """The axes of a dot_general: contracting and batch dims as jax gives them, free dims in
    order (the result is batch, lhs free, rhs free)."""

    lhs_contract: tuple[int, ...]
    rhs_contract: tuple[int, ...]
    lhs_batch: tuple[int, ...]
    rhs_batch: tuple[int, ...]
    lhs_free: tuple[int, ...]
    rhs_free: tuple[int, ...]

    @property
    def has_batch(self) -> bool:
        return bool(self.lhs_batch or self.rhs_batch)


class PrimitiveOp(IRDLOperation):
    """Abstract base of the ops that compute what one jax primitive computes."""

    PRIMITIVE: ClassVar[str]
    OPTIONAL_PARAMS: ClassVar[tuple[str, ...]] = ()

    def primitive_params(self) -> dict[str, Attribute]:
        """The primitive's parameters as attributes (the op's own properties excluded)."""
        return dict(self.attributes)

    def _params_key(self) -> tuple:
        return tuple(sorted(self.primitive_params().items(), key=lambda kv: kv[0]))

    def params(self) -> dict[str, Any]:
        """The primitive's parameters, decoded (None restored for the omitted ones)."""
        return _decoded(self._params_key(), self.OPTIONAL_PARAMS)

    def bind(self, *args, **overrides: Attribute) -> list:
        """Apply the primitive (inside a trace or eagerly), with some parameters replaced
        by ``overrides``; always returns a list."""
        key = self._params_key()
        if overrides:
            key = tuple(sorted({**dict(key), **overrides}.items(), key=lambda kv: kv[0]))
        return _binder(self.PRIMITIVE, key, self.OPTIONAL_PARAMS)(*args)

    def infer_types(self, operand_types: Sequence[Attribute]) -> tuple[Attribute, ...]:
        """The primitive's result types for these operand types; VerifyException when its
        shape rule refuses them."""
        inferred = _inferred(self.PRIMITIVE, self._params_key(), self.OPTIONAL_PARAMS, tuple(operand_types))
        if isinstance(inferred, str):
            raise VerifyException(f"{self.name}: {inferred}")
        return inferred

    def verify_primitive(self, operand_types: Sequence[Attribute], result_types: Sequence[Attribute],
                         *, shapes_only: bool = False) -> None:
        """Results as the primitive computes them from ``operand_types`` (only their shapes
        with ``shapes_only``: quantized ops compute in int8 what the float op would)."""
        expected = self.infer_types(operand_types)
        if shapes_only:
            expected = tuple(shape_dtype(t)[0] for t in expected)
            result_types = tuple(shape_dtype(t)[0] for t in result_types)
        if tuple(expected) != tuple(result_types):
            show = ", ".join(str(t) for t in expected)
            got = ", ".join(str(t) for t in result_types)
            raise VerifyException(f"{self.name}: result types ({got}) do not match what "
                                  f"{self.PRIMITIVE} computes from its operands ({show})")

    def dot_dims(self) -> DotDims:
        """The axes of a dot_general-backed op (from ``dimension_numbers``)."""
        (lc, rc), (lb, rb) = self.params()["dimension_numbers"]
        lhs_rank = len(shape_dtype(self.operands[0].type)[0])
        rhs_rank = len(shape_dtype(self.operands[1].type)[0])
        return DotDims(tuple(lc), tuple(rc), tuple(lb), tuple(rb),
                       tuple(d for d in range(lhs_rank) if d not in lc and d not in lb),
                       tuple(d for d in range(rhs_rank) if d not in rc and d not in rb))

    def conv_dims(self) -> lax.ConvDimensionNumbers:
        """The layouts of a conv_general_dilated-backed op (lhs_spec, rhs_spec, out_spec)."""
        return self.params()["dimension_numbers"]

    def feature_axes(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """(output feature axes, the kernel's output-feature axes) of a dot/conv whose rhs
        is a kernel: one axis each for Dense and Conv, several for flax's DenseGeneral
        (attention's [d_model, heads, head_dim] projections); None for batched dots (two
        activations) and batch-grouped convolutions."""
        if self.PRIMITIVE == "conv_general_dilated":
            if self.params()["batch_group_count"] != 1:
                return None
            dn = self.conv_dims()
            return (dn.out_spec[1],), (dn.rhs_spec[0],)
        if self.PRIMITIVE == "dot_general":
            dims = self.dot_dims()
            if dims.has_batch or not dims.rhs_free:
                return None
            out_rank = len(shape_dtype(self.results[0].type)[0])
            return tuple(range(out_rank - len(dims.rhs_free), out_rank)), dims.rhs_free
        return None


def dot_and_conv(base: type[PrimitiveOp], names: dict[str, tuple[str, str]], doc: str) -> tuple[type, type]:
    """The ``dot_general`` and ``conv_general_dilated`` versions of ``base``: op classes that
    differ only in their primitive. ``names``: primitive -> (class name, op name); ``doc``
    is formatted with the primitive's name."""
    made = []
    for primitive in ("dot_general", "conv_general_dilated"):
        cls_name, op_name = names[primitive]
        cls = type(cls_name, (base,), {
            "name": op_name, "PRIMITIVE": primitive, "OPTIONAL_PARAMS": MATMUL_OPTIONAL[primitive],
            "__module__": base.__module__, "__qualname__": cls_name, "__doc__": doc.format(primitive),
            "__annotations__": {"PRIMITIVE": ClassVar[str], "OPTIONAL_PARAMS": ClassVar[tuple[str, ...]]},
        })
        made.append(irdl_op_definition(cls))
    return made[0], made[1]
