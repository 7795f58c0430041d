"""Symbolic dimensions: a model that runs at any batch size (or sequence length).

A dimension is an ``int`` or a jax symbolic expression (``b``, ``2*b``, ``b*t``) as
``jax.export.symbolic_shape`` makes them, so jax's own shape rules check ops with symbolic
shapes exactly as they check static ones. In the IR a symbolic dimension is MLIR's dynamic
``?`` in a ``tensor`` type whose encoding lists the expressions of its ``?`` dimensions in
order (``tensor<?x64xf32, ["b"]>``); in primitive parameters it is a ``#jlax.dim<"b*t">``
attribute. Expressions are kept as text and parsed in one process-wide jax scope, so equal
names are one symbol everywhere. A model with symbolic dimensions runs by ``specialize``:
the symbols' values solved from the call's input shapes (``solve``), every type and
parameter made concrete, and the static program compiled as any other.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from jax import export
from jax._src.export import shape_poly
from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    ArrayAttr,
    DenseArrayBase,
    DictionaryAttr,
    FunctionType,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    i64,
)
from xdsl.ir import Attribute, ParametrizedAttribute
from xdsl.irdl import irdl_attr_definition
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

Dim = Any  # int | jax's symbolic dimension expression


# At most this many constraints on a model's symbols: jax's decision procedure for
# comparisons grows exponentially with them (a file with 24 took seconds to verify).
MAX_CONSTRAINTS = 8


@functools.lru_cache(maxsize=256)
def _scope(constraints: tuple[str, ...] = ()) -> export.SymbolicScope:
    """The process-wide scope of models whose symbols have these constraints (one per set:
    a model's constraints never reach another model's symbols)."""
    if len(constraints) > MAX_CONSTRAINTS or any(len(c) > MAX_EXPRESSION_CHARS
                                                 or sum(c.count(f) for f in _NONLINEAR) > MAX_NONLINEAR_TERMS
                                                 for c in constraints):
        raise ValueError(f"at most {MAX_CONSTRAINTS} dimension constraints of {MAX_EXPRESSION_CHARS} characters "
                         f"and {MAX_NONLINEAR_TERMS} mod/floordiv/max/min terms each")
    try:
        return export.SymbolicScope(constraints)
    except Exception as e:
        raise ValueError(f"invalid dimension constraints {list(constraints)} ({e})") from None


def constraints_of(d: Dim) -> tuple[str, ...]:
    """The constraints of the scope of a symbolic dimension (e.g. ``("t <= 64",)``): those a
    user gave ``jax.export.symbolic_shape``, and those jax derived from them."""
    return tuple(c.debug_str for c in d.scope._explicit_constraints)


def is_symbolic(d) -> bool:
    return shape_poly.is_symbolic_dim(d)


def is_static_shape(shape: Sequence[Dim]) -> bool:
    return not any(is_symbolic(d) for d in shape)


# An expression's text is at most this long, with at most this many non-linear terms
# (mod, floordiv, max, min, non_negative): jaxlite writes a few characters ("b", "b*t",
# "floordiv(t, 2)"), and comparing expressions with many such terms takes jax exponential time.
MAX_EXPRESSION_CHARS = 64
MAX_NONLINEAR_TERMS = 2
_NONLINEAR = ("mod", "floordiv", "max", "min", "non_negative")


@functools.lru_cache(maxsize=4096)
def parse_dim(text: str, constraints: tuple[str, ...] = ()) -> Dim:
    """The dimension an expression's text stands for (an int when it has no symbol), in the
    scope of ``constraints``; ValueError when it is not one."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"a dimension expression of {len(text)} characters (at most {MAX_EXPRESSION_CHARS})")
    if sum(text.count(f) for f in _NONLINEAR) > MAX_NONLINEAR_TERMS:
        raise ValueError(f"{text!r} has more than {MAX_NONLINEAR_TERMS} mod/floordiv/max/min terms")
    scope = _scope(constraints)
    try:
        (d,) = export.symbolic_shape(text, scope=scope)
    except Exception as e:
        raise ValueError(f"{text!r} is not a dimension expression ({e})") from None
    return d


def dim_text(d: Dim) -> str:
    """A symbolic dimension as text that ``parse_dim`` reads back (in the shared scope)."""
    return str(d)


def canonical(d: Dim) -> Dim:
    """``d`` as an int or as an expression of the shared scope of its constraints (a user's
    jax scope is re-read by name, so the same names from different traces are the same
    symbols)."""
    return parse_dim(dim_text(d), constraints_of(d)) if is_symbolic(d) else int(d)


def symbols(shapes: Sequence[Sequence[Dim]]) -> list[str]:
    """The symbol names in these shapes, sorted."""
    return sorted({v for s in shapes for d in s if is_symbolic(d) for v in d._get_vars()})


def evaluate(d: Dim, env: Mapping[str, int]) -> int:
    """The value of ``d`` when the symbols have the values ``env`` gives."""
    if not is_symbolic(d):
        return int(d)
    return int(d._evaluate(dict(env)))


# -- in the IR ------------------------------------------------------------------------
def _strings(attr: Attribute) -> tuple[str, ...] | None:
    if isinstance(attr, ArrayAttr) and all(isinstance(a, StringAttr) for a in attr.data):
        return tuple(a.data for a in attr.data)
    return None


def encoding_of(shape: Sequence[Dim]) -> Attribute | None:
    """The encoding of a tensor type with this shape: its symbolic dims' texts, then (when
    their symbols are constrained) the constraints as a list; None for a static shape."""
    symbolic = [d for d in shape if is_symbolic(d)]
    if not symbolic:
        return None
    items: list[Attribute] = [StringAttr(dim_text(d)) for d in symbolic]
    constraints = constraints_of(symbolic[0])
    if constraints:
        items.append(ArrayAttr([StringAttr(c) for c in constraints]))
    return ArrayAttr(items)


def tensor_dims(t: TensorType) -> tuple[Dim, ...]:
    """The dimensions of a tensor type: ints, with the encoding's expressions at its ``?``."""
    shape = t.get_shape()
    if DYNAMIC_INDEX not in shape:
        return tuple(shape)
    enc = t.encoding
    items = list(enc.data) if isinstance(enc, ArrayAttr) else []
    constraints = _strings(items.pop()) if items and isinstance(items[-1], ArrayAttr) else ()
    texts = [a.data for a in items if isinstance(a, StringAttr)]
    dynamic = sum(1 for d in shape if d == DYNAMIC_INDEX)
    if constraints is None or len(texts) != dynamic or len(texts) != len(items):
        raise TypeError(f"{t}: a dynamic dimension needs its expression, one string per '?' in the encoding "
                        "(then, optionally, a list of constraints)")
    it = iter(texts)
    try:
        return tuple(parse_dim(next(it), constraints) if d == DYNAMIC_INDEX else d for d in shape)
    except ValueError as e:
        raise TypeError(f"{t}: {e}") from None


@irdl_attr_definition
class DimAttr(ParametrizedAttribute):
    """``#jlax.dim<"b*t">``: a symbolic dimension in a primitive's parameters (a reshape's
    ``new_sizes``, an iota's ``shape``); ``#jlax.dim<"t", ["t <= 64"]>`` with the
    constraints of its symbols."""

    name = "jlax.dim"
    expr: StringAttr
    constraints: ArrayAttr

    def __init__(self, d: Dim):
        super().__init__(StringAttr(dim_text(d)), ArrayAttr([StringAttr(c) for c in constraints_of(d)]))

    def verify(self) -> None:
        constraints = _strings(self.constraints)
        if constraints is None:
            raise VerifyException("#jlax.dim: constraints must be strings")
        try:
            d = parse_dim(self.expr.data, constraints)
        except ValueError as e:
            raise VerifyException(str(e)) from None
        if not is_symbolic(d):
            raise VerifyException(f"#jlax.dim<{self.expr.data!r}> has no symbol: write the integer")

    @property
    def dim(self) -> Dim:
        return parse_dim(self.expr.data, _strings(self.constraints))

    @classmethod
    def parse_parameters(cls, parser: AttrParser):
        with parser.in_angle_brackets():
            expr = StringAttr(parser.parse_str_literal())
            constraints = ArrayAttr([])
            if parser.parse_optional_punctuation(",") is not None:
                constraints = parser.parse_attribute()
                if not isinstance(constraints, ArrayAttr):
                    parser.raise_error("expected a list of constraints")
        return (expr, constraints)

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string("<")
        printer.print_string_literal(self.expr.data)
        if self.constraints.data:
            printer.print_string(", ")
            printer.print_attribute(self.constraints)
        printer.print_string(">")


def module_symbols(module: ModuleOp) -> set[str]:
    """Every symbol a module's types, #jlax.dim parameters and their constraints name."""
    found: set[str] = set()

    def visit(attr) -> None:
        if isinstance(attr, TensorType):
            for d in tensor_dims(attr):
                if is_symbolic(d):
                    found.update(d._get_vars())
                    for c in d.scope._explicit_constraints:
                        found.update(v for e in (c.e1, c.e2) if is_symbolic(e) for v in e._get_vars())
        elif isinstance(attr, DimAttr):
            found.update(attr.dim._get_vars())
        elif isinstance(attr, ArrayAttr | FunctionType):
            for a in (attr.data if isinstance(attr, ArrayAttr) else (*attr.inputs.data, *attr.outputs.data)):
                visit(a)
        elif isinstance(attr, DictionaryAttr):
            for a in attr.data.values():
                visit(a)

    for op in module.walk():
        for a in (*op.properties.values(), *op.attributes.values()):
            visit(a)
        for v in (*op.results, *(a for r in op.regions for b in r.blocks for a in b.args)):
            visit(v.type)
    return found


def has_symbolic_types(module: ModuleOp) -> bool:
    """Whether any value of ``module`` has a symbolic dimension."""
    for op in module.walk():
        for v in (*op.results, *(a for r in op.regions for b in r.blocks for a in b.args)):
            if isinstance(v.type, TensorType) and DYNAMIC_INDEX in v.type.get_shape():
                return True
    return False


def _concrete_attr(attr: Attribute, env: Mapping[str, int]) -> Attribute:
    """``attr`` with every symbolic dimension (in types and parameters) given its value."""
    if isinstance(attr, TensorType):
        if DYNAMIC_INDEX not in attr.get_shape():
            return attr
        return TensorType(attr.get_element_type(), [evaluate(d, env) for d in tensor_dims(attr)])
    if isinstance(attr, DimAttr):
        return IntegerAttr(evaluate(attr.dim, env), i64)
    if isinstance(attr, FunctionType):
        return FunctionType.from_lists([_concrete_attr(t, env) for t in attr.inputs.data],
                                       [_concrete_attr(t, env) for t in attr.outputs.data])
    if isinstance(attr, ArrayAttr):
        items = [_concrete_attr(a, env) for a in attr.data]
        had_dims = any(isinstance(a, DimAttr) for a in attr.data)
        if had_dims and all(isinstance(a, IntegerAttr) and a.type == i64 for a in items):
            # a tuple of ints with a symbol among them: the dense array a static trace has
            return DenseArrayBase.from_list(i64, [a.value.data for a in items])
        return ArrayAttr(items)
    if isinstance(attr, DictionaryAttr):
        return DictionaryAttr({k: _concrete_attr(v, env) for k, v in attr.data.items()})
    if isinstance(attr, ParametrizedAttribute) and not isinstance(attr, TensorType):
        params = attr.parameters
        new = tuple(_concrete_attr(p, env) for p in params)
        if any(n is not p for n, p in zip(new, params, strict=True)):
            return type(attr).new(new)
    return attr


def specialize(module: ModuleOp, env: Mapping[str, int]) -> ModuleOp:
    """A copy of ``module`` whose symbolic dimensions have the values in ``env``."""
    out = module.clone()
    for op in out.walk():
        for props in (op.properties, op.attributes):
            for k, v in list(props.items()):
                props[k] = _concrete_attr(v, env)
        for v in (*op.results, *(a for r in op.regions for b in r.blocks for a in b.args)):
            v._type = _concrete_attr(v.type, env)  # the value keeps its uses; only its type changes
    return out


def counterparts(module: ModuleOp, copy: ModuleOp, values: Sequence) -> list:
    """The values of ``copy`` (a clone of ``module``, e.g. specialized) that stand where
    ``values`` stand in ``module``."""
    where = {}
    for op, twin in zip(module.walk(), copy.walk(), strict=True):
        where.update(zip(op.results, twin.results, strict=True))
        for r, r2 in zip(op.regions, twin.regions, strict=True):
            for b, b2 in zip(r.blocks, r2.blocks, strict=True):
                where.update(zip(b.args, b2.args, strict=True))
    return [where[v] for v in values]


# -- at call time ---------------------------------------------------------------------
def _linear_in(d: Dim, var: str, env: Mapping[str, int]) -> tuple[int, int] | None:
    """(k, c) when ``d`` is ``k*var + c`` once the symbols in ``env`` are known, else None
    (expressions with mod, floordiv, max or min are never solved from: only checked)."""
    if any(f in dim_text(d) for f in _NONLINEAR):
        return None
    try:
        points = [evaluate(d, {**env, var: x}) for x in (1, 2, 3, 5)]
    except Exception:
        return None
    k = points[1] - points[0]
    c = points[0] - k
    if k == 0 or any(p != k * x + c for p, x in zip(points, (1, 2, 3, 5), strict=True)):
        return None
    return k, c


def _check_constraints(d: Dim, env: Mapping[str, int], source: Mapping[str, str]) -> None:
    """ValueError naming the first constraint of ``d``'s scope that ``env`` breaks."""
    for c in d.scope._explicit_constraints:
        try:
            margin = evaluate(c.e1, env) - evaluate(c.e2, env)
        except Exception:  # a symbol no input has: jax refuses such models when tracing
            raise ValueError(f"the model's constraint {c.debug_str} names a symbol no input has") from None
        if margin < 0 or (margin != 0 and c.cmp.name == "EQ"):
            values = ", ".join(f"{v}={env[v]} (from {source[v]})" for v in sorted(env))
            raise ValueError(f"{values} breaks the model's constraint {c.debug_str}")


def solve(shapes: Sequence[Sequence[Dim]], actual: Sequence[Sequence[int]], names: Sequence[str]) -> dict[str, int]:
    """The values of the symbols in ``shapes`` that make them ``actual`` (the call's input
    shapes; ``names`` the inputs' names for messages). ValueError naming the dimension that
    disagrees, or the symbol no input determines."""
    env: dict[str, int] = {}
    source: dict[str, str] = {}
    wanted = symbols(shapes)
    pending = [(i, j, d) for i, s in enumerate(shapes) for j, d in enumerate(s) if is_symbolic(d)]
    progress = True
    while progress and len(env) < len(wanted):
        progress = False
        for i, j, d in pending:
            unknown = [v for v in d._get_vars() if v not in env]
            if len(unknown) != 1:
                continue
            (var,) = unknown
            form = _linear_in(d, var, env)
            if form is None:
                continue
            k, c = form
            value, rem = divmod(actual[i][j] - c, k)
            if rem or value < 1:
                raise ValueError(f"{names[i]} dimension {j} is {actual[i][j]}, but the model's {dim_text(d)} "
                                 f"cannot be that for any {var} >= 1")
            env[var], source[var] = value, f"{names[i]} dimension {j}"
            progress = True
    missing = [v for v in wanted if v not in env]
    if missing:
        raise ValueError(f"no input dimension determines {', '.join(missing)}")
    if pending:
        _check_constraints(pending[0][2], env, source)
    for i, j, d in pending:
        expected = evaluate(d, env)
        if expected != actual[i][j]:
            got = ", ".join(f"{v}={env[v]} (from {source[v]})" for v in sorted(d._get_vars()))
            raise ValueError(f"{names[i]} dimension {j} must be {dim_text(d)} = {expected} with {got}, "
                             f"got {actual[i][j]}")
    return env
