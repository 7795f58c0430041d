"""canonicalize: fold constants and simplify algebra, keeping IEEE results within rounding.

Rewrites, repeated until nothing changes:

* **constant folding** — every op whose operands are all constants or weights is
  evaluated at convert time (one jax.jit over the whole constant subgraph). A folded value
  is materialized where non-constant code reads it, unless that would store more bytes
  than its sources (a broadcast of a bias to the batch): then its operands are
  materialized instead. Small results become ``jlax.constant``, larger ones new weights.
* **identities** — x+0, x-0, x*1, x/1, -(-x), select_n with a constant selector, no-op converts/reshapes/broadcasts/
  transposes/slices/pads/squeezes/revs, transpose∘transpose, reshape∘reshape,
  broadcast∘broadcast.
* **like terms** — ``c1*a + c2*a -> (c1+c2)*a`` (so ``3*a + 4*a + 5*a -> 12*a``), also with
  ``a`` alone and with subtraction; chains ``(x*c1)*c2``, ``(x+c1)+c2``, ``(x/c1)/c2``,
  ``(x*c1)/c2`` merge into one op; ``x - c`` becomes ``x + (-c)`` and constants move right.
* **weights to the right** — ``dot_general(w, x)`` with a weight or constant ``w`` (what
  ``jnp.einsum("btc,tk->bkc", x, w)`` traces to) becomes ``transpose(dot_general(x, w))``,
  the form fuse and quantize look for.
* with ``fast-math=true`` only: ``x - x -> 0`` and ``x * 0 -> 0`` (wrong for inf/nan).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, Operation, SSAValue
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.rewriter import InsertPoint

from jaxlite.dialects import dims, jlax
from jaxlite.dialects.module import blocks_of
from jaxlite.dialects.params import encode
from jaxlite.dialects.types import KeyType, shape_dtype, tensor_type
from jaxlite.dialects.weights import WeightStore
from jaxlite.errors import ConversionError
from jaxlite.passes.common import (
    ModelPass,
    constant_array,
    is_constant,
    is_op,
    producer,
    splat_value,
    users,
)

_NOT_FOLDABLE = {"platform_index", "optimization_barrier"}


def _nbytes(value: SSAValue) -> tuple[int, int]:
    shape, dtype = shape_dtype(value.type)
    size = int(np.prod(shape)) if shape else 1
    return size, size * dtype.itemsize


def _foldable(op: Operation) -> bool:
    """LaxOps whose results can be stored: not platform-dependent, not PRNG keys, not of a
    symbolic shape (an iota of ``b`` elements is only known at run time)."""
    return (isinstance(op, jlax.LaxOp) and op.PRIMITIVE not in _NOT_FOLDABLE
            and not any(isinstance(r.type.get_element_type(), KeyType) for r in op.results)
            and all(dims.is_static_shape(shape_dtype(r.type)[0]) for r in op.results))


def fold_constants(module: ModuleOp, store: WeightStore) -> int:
    """Fold every constant subgraph of every block; returns how many values were folded."""
    return sum(_fold_block(block, store) for block in blocks_of(module))


def _fold_block(block: Block, store: WeightStore) -> int:
    leaf: dict[SSAValue, int] = {}
    derived: dict[SSAValue, int] = {}  # value -> bytes of the constants it is computed from
    for op in block.ops:
        if isinstance(op, jlax.ConstantOp | jlax.WeightOp):
            leaf[op.results[0]] = _nbytes(op.results[0])[1]
        elif _foldable(op) and all(v in leaf or v in derived for v in op.operands):
            src = sum(leaf.get(v, 0) + derived.get(v, 0) for v in op.operands)
            for r in op.results:
                derived[r] = src
    if not derived:
        return 0
    const_ops = {v.owner for v in derived}
    stack = [v for v in derived if any(u not in const_ops for u in users(v))]
    materialize: list[SSAValue] = []
    seen: set[SSAValue] = set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        size, nbytes = _nbytes(v)
        if size <= jlax.INLINE_CONSTANT_ELEMENTS or nbytes <= derived[v]:
            materialize.append(v)
        else:  # folding would store more than it saves: fold the operands instead
            stack.extend(x for x in v.owner.operands if x in derived)
    if not materialize:
        return 0
    # the ops that compute the materialized values, in block order
    needed: set[Operation] = set()
    todo = [v.owner for v in materialize]
    while todo:
        op = todo.pop()
        if op in needed:
            continue
        needed.add(op)
        todo.extend(v.owner for v in op.operands if v in derived)
    order = [op for op in block.ops if op in needed]
    leaves = list(dict.fromkeys(v for op in order for v in op.operands if v in leaf))

    def run(leaf_values):  # each op's own semantics (its jax primitive), one jit for all
        env = dict(zip(leaves, leaf_values, strict=True))
        for op in order:
            env.update(zip(op.results, op.evaluate(*[env[v] for v in op.operands]), strict=True))
        return [env[v] for v in materialize]

    values = jax.device_get(jax.jit(run)([constant_array(v, store) for v in leaves]))
    for v, arr in zip(materialize, values, strict=True):
        arr = np.asarray(arr)
        if arr.size <= jlax.INLINE_CONSTANT_ELEMENTS and _from_weight(v) is None:
            new = jlax.ConstantOp.from_array(arr)
        else:
            new = jlax.WeightOp(store.add(arr, _hint(v)), v.type)
        _insert_before(new, v.owner)
        v.replace_all_uses_with(new.results[0])
    for op in reversed(order):
        if all(not r.uses for r in op.results):
            op.detach()
            op.erase()
    return len(materialize)


def _insert_before(new: Operation, anchor: Operation) -> None:
    anchor.parent_block().insert_op_before(new, anchor)


def _from_weight(v: SSAValue) -> str | None:
    """Name of a weight ``v`` is computed from (parameters stay weights when folded)."""
    todo, seen = [v], set()
    while todo:
        x = todo.pop()
        op = producer(x)
        if isinstance(op, jlax.WeightOp):
            return op.weight_name
        if op is None or op in seen or isinstance(op, jlax.ConstantOp):
            continue
        seen.add(op)
        todo.extend(op.operands)
    return None


def _hint(v: SSAValue) -> str:
    name = _from_weight(v)
    # reshapes/broadcasts of a parameter keep its name; computed values say how
    if name is not None and v.owner.PRIMITIVE in ("reshape", "broadcast_in_dim", "convert_element_type"):
        return name
    return f"{name or 'folded'}.{v.owner.PRIMITIVE}"


# ---------------------------------------------------------------------------------------
# algebraic patterns


def _new(primitive: str, inputs, result_type, params=None) -> jlax.LaxOp:
    return jlax.PRIMITIVE_OPS[primitive](inputs, [result_type], params or {})


def _scalar_const(value, dtype) -> jlax.ConstantOp:
    return jlax.ConstantOp.from_array(np.asarray(value, dtype=dtype))


def _is_float(value: SSAValue) -> bool:
    return shape_dtype(value.type)[1].kind == "f"


def _dtype(value: SSAValue):
    return shape_dtype(value.type)[1]


def _binary(op: Operation, *names: str) -> bool:
    return isinstance(op, jlax.LaxOp) and op.PRIMITIVE in names and len(op.operands) == 2


def _forward(rewriter: PatternRewriter, op: Operation, value: SSAValue) -> bool:
    if value.type != op.results[0].type:
        return False
    rewriter.replace(op, [], [value])
    return True


class ConstantsToTheRight(RewritePattern):
    """add/mul(c, x) -> add/mul(x, c), so the other patterns see one shape."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if _binary(op, "add", "mul", "max", "min") and splat_value(op.operands[0]) is not None \
                and splat_value(op.operands[1]) is None:
            rewriter.replace(op, _new(op.PRIMITIVE, [op.operands[1], op.operands[0]],
                                      op.results[0].type, dict(op.attributes)))


class WeightsToTheRight(RewritePattern):
    """dot_general(w, x) -> transpose(dot_general(x, w)) for a constant w and no batch dims."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if op.PRIMITIVE != "dot_general" or "dimension_numbers" not in op.attributes:
            return
        lhs, rhs = op.operands
        dims = op.dot_dims()
        if dims.has_batch or not is_constant(lhs) or is_constant(rhs):
            return
        lhs_free, rhs_free = len(dims.lhs_free), len(dims.rhs_free)
        out_shape, dtype = shape_dtype(op.results[0].type)
        attrs = dict(op.attributes)
        attrs["dimension_numbers"] = encode(((dims.rhs_contract, dims.lhs_contract), ((), ())))
        precision = op.params()["precision"]
        if isinstance(precision, tuple):
            attrs["precision"] = encode(tuple(reversed(precision)))
        swapped_shape = (*out_shape[lhs_free:], *out_shape[:lhs_free])
        dot = _new("dot_general", [rhs, lhs], tensor_type(swapped_shape, dtype), attrs)
        perm = (*range(rhs_free, rhs_free + lhs_free), *range(rhs_free))
        back = _new("transpose", [dot.results[0]], op.results[0].type, {"permutation": encode(perm)})
        rewriter.replace(op, [dot, back])


class AddZero(RewritePattern):
    """x + 0 -> x, x - 0 -> x."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if _binary(op, "add", "sub") and splat_value(op.operands[1]) == 0:
            _forward(rewriter, op, op.operands[0])


class MulOne(RewritePattern):
    """x * 1 -> x, x / 1 -> x."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if _binary(op, "mul", "div") and splat_value(op.operands[1]) == 1:
            _forward(rewriter, op, op.operands[0])


class DoubleNegation(RewritePattern):
    """-(-x) -> x."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if op.PRIMITIVE == "neg" and is_op(inner := producer(op.operands[0]), "neg"):
            _forward(rewriter, op, inner.operands[0])


class ConstantSelector(RewritePattern):
    """select_n(c, x0, x1, ...) -> x_c for a constant selector (jnp.var's dof check)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if op.PRIMITIVE != "select_n" or (which := splat_value(op.operands[0])) is None:
            return
        if 0 <= int(which) < len(op.operands) - 1:
            _forward(rewriter, op, op.operands[1 + int(which)])


class NoOpConversion(RewritePattern):
    """convert / reshape / squeeze / identity broadcast to the type it already has -> x."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if op.PRIMITIVE not in ("convert_element_type", "reshape", "broadcast_in_dim", "squeeze") \
                or len(op.operands) != 1 or op.operands[0].type != op.results[0].type:
            return
        if op.PRIMITIVE == "broadcast_in_dim" and op.params()["broadcast_dimensions"] != tuple(
                range(len(shape_dtype(op.operands[0].type)[0]))):
            return
        _forward(rewriter, op, op.operands[0])


class NoOpWindow(RewritePattern):
    """slice / pad / rev / reductions that keep the type and move nothing -> x."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        p = op.PRIMITIVE
        if p not in ("slice", "pad", "rev", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod") \
                or op.operands[0].type != op.results[0].type:
            return
        params = op.params()
        if p == "slice" and any(s not in (None, 1) for s in (params.get("strides") or ())):
            return
        if p == "pad" and any(c != (0, 0, 0) for c in params["padding_config"]):
            return
        if p == "rev" and params["dimensions"]:
            return
        _forward(rewriter, op, op.operands[0])


class TransposeChain(RewritePattern):
    """transpose by the identity -> x; transpose(transpose(x)) -> one transpose (or x)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if op.PRIMITIVE != "transpose":
            return
        perm = op.params()["permutation"]
        if perm == tuple(range(len(perm))):
            _forward(rewriter, op, op.operands[0])
        elif is_op(inner := producer(op.operands[0]), "transpose"):
            first = inner.params()["permutation"]
            composed = tuple(first[i] for i in perm)
            if composed == tuple(range(len(composed))):
                _forward(rewriter, op, inner.operands[0])
            else:
                rewriter.replace(op, _new("transpose", [inner.operands[0]], op.results[0].type,
                                          {"permutation": encode(composed)}))


class ReshapeChain(RewritePattern):
    """reshape(reshape(x)) -> reshape(x)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if op.PRIMITIVE == "reshape" and is_op(inner := producer(op.operands[0]), "reshape") \
                and "dimensions" not in op.attributes and "dimensions" not in inner.attributes:
            rewriter.replace(op, _new("reshape", [inner.operands[0]], op.results[0].type, dict(op.attributes)))


class BroadcastChain(RewritePattern):
    """broadcast_in_dim(broadcast_in_dim(x)) -> one broadcast_in_dim."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if op.PRIMITIVE != "broadcast_in_dim" or not is_op(inner := producer(op.operands[0]), "broadcast_in_dim"):
            return
        d_inner = inner.params()["broadcast_dimensions"]
        d_outer = op.params()["broadcast_dimensions"]
        attrs = dict(op.attributes)
        attrs["broadcast_dimensions"] = encode(tuple(d_outer[i] for i in d_inner))
        rewriter.replace(op, _new("broadcast_in_dim", [inner.operands[0]], op.results[0].type, attrs))


def _term(value: SSAValue) -> tuple[SSAValue, float] | None:
    """value as (a, c) with value == c * a, for c a scalar constant (c = 1 for a alone)."""
    op = producer(value)
    if _binary(op, "mul"):
        c = splat_value(op.operands[1])
        if c is not None and op.operands[0].type == value.type:
            return op.operands[0], c
    return value, 1


class LikeTerms(RewritePattern):
    """c1*a + c2*a -> (c1+c2)*a and c1*a - c2*a -> (c1-c2)*a (floats)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if not _binary(op, "add", "sub") or not _is_float(op.results[0]):
            return
        lhs, rhs = op.operands
        if lhs.type != op.results[0].type or rhs.type != op.results[0].type:
            return
        (a, ca), (b, cb) = _term(lhs), _term(rhs)
        if a is not b or (ca == 1 and cb == 1 and op.PRIMITIVE == "sub"):
            return
        dtype = _dtype(op.results[0])
        total = np.asarray(ca, dtype) + np.asarray(cb, dtype) if op.PRIMITIVE == "add" \
            else np.asarray(ca, dtype) - np.asarray(cb, dtype)
        c = _scalar_const(total, dtype)
        rewriter.insert(c, InsertPoint.before(op))
        rewriter.replace(op, _new("mul", [a, c.results[0]], op.results[0].type, {}))


class ConstantChains(RewritePattern):
    """(x*c1)*c2 -> x*(c1*c2), (x+c1)+c2 -> x+(c1+c2), (x/c1)/c2 -> x/(c1*c2),
    (x*c1)/c2 -> x*(c1/c2), (x/c1)*c2 -> x*(c2/c1), x - c -> x + (-c)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if not _binary(op, "add", "sub", "mul", "div"):
            return
        c2 = splat_value(op.operands[1])
        if c2 is None:
            return
        dtype = _dtype(op.results[0])
        is_float = dtype.kind == "f"
        x = op.operands[0]
        if op.PRIMITIVE == "sub":
            if is_float:
                c = _scalar_const(-np.asarray(c2, dtype), dtype)
                rewriter.insert(c, InsertPoint.before(op))
                rewriter.replace(op, _new("add", [x, c.results[0]], op.results[0].type))
            return
        inner = producer(x)
        if not _binary(inner, "add", "mul", "div") or x.type != op.results[0].type:
            return
        c1 = splat_value(inner.operands[1])
        if c1 is None or inner.operands[0].type != op.results[0].type:
            return
        a, b = np.asarray(c1, dtype), np.asarray(c2, dtype)
        pair = (inner.PRIMITIVE, op.PRIMITIVE)
        if pair == ("mul", "mul"):
            new_p, value = "mul", a * b
        elif pair == ("add", "add"):
            new_p, value = "add", a + b
        elif pair == ("div", "div") and is_float:
            new_p, value = "div", a * b
        elif pair == ("mul", "div") and is_float:
            new_p, value = "mul", a / b
        elif pair == ("div", "mul") and is_float:
            new_p, value = "mul", b / a
        else:
            return
        c = _scalar_const(value, dtype)
        rewriter.insert(c, InsertPoint.before(op))
        rewriter.replace(op, _new(new_p, [inner.operands[0], c.results[0]], op.results[0].type))


class FastMath(RewritePattern):
    """x - x -> 0 and x * 0 -> 0: not IEEE-exact (inf, nan), only with fast-math."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if not ((_binary(op, "sub") and op.operands[0] is op.operands[1])
                or (_binary(op, "mul") and splat_value(op.operands[1]) == 0)):
            return
        shape, dtype = shape_dtype(op.results[0].type)
        zero = _scalar_const(0, dtype)
        if not shape:
            rewriter.replace(op, zero)
            return
        broadcast = _new("broadcast_in_dim", [zero.results[0]], op.results[0].type,
                         {"shape": encode(shape), "broadcast_dimensions": encode(())})
        rewriter.replace(op, [zero, broadcast])


MAX_WALKS = 1000  # a model needs a handful; more means two rewrites undo each other
PATTERNS: tuple[type[RewritePattern], ...] = (
    ConstantsToTheRight, WeightsToTheRight, AddZero, MulOne, DoubleNegation, ConstantSelector, NoOpConversion,
    NoOpWindow, TransposeChain, ReshapeChain, BroadcastChain, LikeTerms, ConstantChains)


@dataclass(frozen=True)
class CanonicalizePass(ModelPass):
    name = "canonicalize"
    fast_math: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        """The patterns and constant folding, alternated by one walker until neither
        changes anything (folding runs between walks: it takes whole blocks at once). Every
        round removes or moves ops towards a normal form; a rewrite loop would be a bug, and
        is reported as one rather than cut short."""
        patterns = [p() for p in PATTERNS] + ([FastMath()] if self.fast_math else [])
        walks = 0

        def fold(region, listener) -> bool:
            nonlocal walks
            walks += 1
            if walks > MAX_WALKS:
                raise ConversionError(f"canonicalize did not reach a fixed point in {MAX_WALKS} walks "
                                      "(two rewrites undo each other): please report this model")
            return fold_constants(op, self.weights) > 0

        PatternRewriteWalker(GreedyRewritePatternApplier(patterns), apply_recursively=True,
                             post_walk_func=fold).rewrite_module(op)
