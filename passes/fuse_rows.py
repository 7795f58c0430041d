"""LayerNorm and softmax, recognised in the op sequences jax traces them into, become one
``jfuse.layer_norm`` / ``jfuse.softmax`` each (part of the ``fuse`` pass).

Traced, a LayerNorm is 14-16 ops and a softmax 8; XLA:CPU runs them as 4 fusions each
(two of them reductions), and a native row kernel does the same in one pass over the rows
in cache. Only reductions over the last axis are matched, and only when no intermediate
value is read outside the pattern. Recognised shapes:

* mean: ``reduce_sum(t) / n`` over the last axis, kept as ``[..., 1]`` by a
  ``broadcast_in_dim`` or ``reshape`` before or after the division;
* variance: flax's ``max(mean(x^2) - mean(x)^2, 0)``, or ``mean((x - mean(x))^2)``
  (``jnp.var``; Equinox clamps it at 0 too); a square is ``square``, ``integer_pow 2`` or
  ``x * x``;
* LayerNorm: ``(x - mean) * (rsqrt(var + eps) * scale)`` (flax) or
  ``(x - mean) * rsqrt(var + eps) * scale`` (the others), scale and ``+ bias`` optional;
* softmax: ``e = exp(x - max(reduce_max(x), -inf)); e / sum(e)`` (jax.nn.softmax).
"""

from __future__ import annotations

from xdsl.ir import Operation, SSAValue

from jaxlite.dialects import fused
from jaxlite.dialects.params import decode
from jaxlite.dialects.types import shape_dtype
from jaxlite.passes.common import (
    is_op,
    other_operand,
    producer,
    replace_pattern,
    sole_user,
    splat_value,
    users,
)


class _Match:
    """The ops of one candidate pattern, collected while it is walked."""

    def __init__(self, x_shape: tuple[int, ...]):
        self.x_shape = x_shape
        self.ops: dict[Operation, None] = {}  # ordered; ops shared by two paths count once

    def add(self, *ops: Operation) -> None:
        self.ops.update(dict.fromkeys(ops))

    def take(self, op: Operation | None, primitive: str) -> Operation | None:
        if not is_op(op, primitive):
            return None
        self.add(op)
        return op

    def unkeep(self, v: SSAValue) -> SSAValue:
        """v without a trailing-1 reshape/broadcast_in_dim of a last-axis reduction."""
        op = producer(v)
        if (is_op(op, "broadcast_in_dim") or is_op(op, "reshape")) \
                and tuple(shape_dtype(v.type)[0]) == (*self.x_shape[:-1], 1) \
                and tuple(shape_dtype(op.operands[0].type)[0]) == self.x_shape[:-1] \
                and (not is_op(op, "broadcast_in_dim")
                     or decode(op.attributes["broadcast_dimensions"]) == tuple(range(len(self.x_shape) - 1))):
            self.add(op)
            return op.operands[0]
        return v

    def reduced(self, v: SSAValue, primitive: str) -> SSAValue | None:
        """t where v is ``primitive(t)`` over the last axis of an x-shaped t."""
        op = self.take(producer(self.unkeep(v)), primitive)
        if op is None or decode(op.attributes["axes"]) != (len(self.x_shape) - 1,) \
                or tuple(shape_dtype(op.operands[0].type)[0]) != self.x_shape:
            return None
        return op.operands[0]

    def mean_of(self, v: SSAValue) -> SSAValue | None:
        """t where v is the mean of t over the last axis (kept or not)."""
        div = self.take(producer(self.unkeep(v)), "div")
        if div is None or splat_value(div.operands[1]) != self.x_shape[-1]:
            return None
        return self.reduced(div.operands[0], "reduce_sum")

    def square_of(self, v: SSAValue) -> SSAValue | None:
        op = producer(v)
        if self.take(op, "square") is not None:
            return op.operands[0]
        if (is_op(op, "integer_pow") and decode(op.attributes["y"]) == 2) \
                or (is_op(op, "mul") and op.operands[0] is op.operands[1]):
            self.add(op)
            return op.operands[0]
        return None

    def centred(self, v: SSAValue) -> SSAValue | None:
        """x where v is ``x - mean(x)``."""
        sub = self.take(producer(v), "sub")
        if sub is None or tuple(shape_dtype(v.type)[0]) != self.x_shape:
            return None
        x = sub.operands[0]
        return x if self.mean_of(sub.operands[1]) is x else None

    def closed(self, result: Operation) -> bool:
        """No value made inside the pattern is read outside it (but its result)."""
        block = result.parent_block()
        return all(op.parent_block() is block for op in self.ops) and all(
            u in self.ops for op in self.ops if op is not result for r in op.results for u in users(r))

    def replace(self, result: Operation, new: Operation) -> None:
        """Every op of the pattern precedes ``result`` (they all feed it)."""
        first, *rest = sorted(self.ops, key=result.parent_block().get_operation_index)
        replace_pattern(first, rest, [new], result.results[0], new.results[0])


def _row_vector(v: SSAValue, x_shape: tuple[int, ...]) -> bool:
    return fused.is_row_vector(shape_dtype(v.type)[0], x_shape)


def _variance_input(m: _Match, var: SSAValue) -> SSAValue | None:
    """x where var is the (biased) variance of x over the last axis, in either form, with
    or without a ``max(., 0)`` clamp."""
    var = m.unkeep(var)
    clamp = producer(var)
    if is_op(clamp, "max") and splat_value(clamp.operands[1]) == 0:
        m.add(clamp)
        var = m.unkeep(clamp.operands[0])
    sub = m.take(producer(var), "sub")
    if sub is not None:  # flax: mean(x^2) - mean(x)^2
        sq_in = m.mean_of(sub.operands[0])
        mean = m.square_of(sub.operands[1]) if sq_in is not None else None
        x = m.square_of(sq_in) if mean is not None else None
        return x if x is not None and m.mean_of(mean) is x else None
    sq_in = m.mean_of(var)  # mean((x - mean(x))^2): jnp.var, Equinox
    c = m.square_of(sq_in) if sq_in is not None else None
    return m.centred(c) if c is not None else None


def match_layer_norm(rsqrt: Operation) -> tuple[_Match, Operation, fused.LayerNormOp] | None:
    add = producer(rsqrt.operands[0])
    if not is_op(add, "add"):
        return None
    eps_value = next((v for v in add.operands if splat_value(v) is not None), None)
    if eps_value is None or other_operand(add, eps_value) is None:
        return None
    var = other_operand(add, eps_value)
    # rsqrt's one user multiplies it by an x-shaped value (flax: first by the scale)
    user = sole_user(rsqrt.results[0])
    if not is_op(user, "mul"):
        return None
    x_shape = tuple(shape_dtype(user.results[0].type)[0])
    if not x_shape or shape_dtype(user.results[0].type)[1].kind != "f":
        return None
    m = _Match(x_shape)
    m.add(add, rsqrt)
    x = _variance_input(m, var)
    if x is None or tuple(shape_dtype(x.type)[0]) != x_shape:
        return None
    scale = bias = None
    r = rsqrt.results[0]
    m.add(user)
    factor = other_operand(user, r)
    # the scale, unless it is the centred value itself (x - mean is made by a sub; a [1, N]
    # x has the shape of a row vector too)
    if factor is not None and _row_vector(factor, x_shape) and not is_op(producer(factor), "sub"):
        scale, r = factor, user.results[0]  # flax: rsqrt(var + eps) * scale
        user = m.take(sole_user(r), "mul")
        if user is None:
            return None
    c = other_operand(user, r)
    if c is None or m.centred(c) is not x:
        return None
    result = user
    nxt = sole_user(result.results[0])
    if scale is None and is_op(nxt, "mul") and (s := other_operand(nxt, result.results[0])) is not None \
            and _row_vector(s, x_shape):
        scale, result = s, nxt  # (x - mean) * rsqrt(var + eps) * scale
        m.add(nxt)
        nxt = sole_user(result.results[0])
    if is_op(nxt, "add") and (b := other_operand(nxt, result.results[0])) is not None and _row_vector(b, x_shape):
        bias, result = b, nxt
        m.add(nxt)
    if result.results[0].type != x.type or not m.closed(result):
        return None
    for v in (scale, bias):
        if v is not None and shape_dtype(v.type)[1] != shape_dtype(x.type)[1]:
            return None
    eps = splat_value(eps_value)
    if eps < 0:
        return None
    return m, result, fused.LayerNormOp(x, scale, bias, eps)


def match_softmax(exp: Operation) -> tuple[_Match, Operation, fused.SoftmaxOp] | None:
    x_shape = tuple(shape_dtype(exp.results[0].type)[0])
    if not x_shape or shape_dtype(exp.results[0].type)[1].kind != "f":
        return None
    m = _Match(x_shape)
    m.add(exp)
    sub = m.take(producer(exp.operands[0]), "sub")
    if sub is None:
        return None
    x = sub.operands[0]
    peak = m.unkeep(sub.operands[1])
    clamp = producer(peak)
    if is_op(clamp, "max") and splat_value(clamp.operands[1]) == float("-inf"):
        m.add(clamp)
        peak = clamp.operands[0]
    if m.reduced(peak, "reduce_max") is not x:
        return None
    e = exp.results[0]
    div = next((u for u in users(e) if is_op(u, "div") and u.operands[0] is e), None)
    if div is None or len(users(e)) != 2:
        return None
    m.add(div)
    if m.reduced(div.operands[1], "reduce_sum") is not e or div.results[0].type != x.type or not m.closed(div):
        return None
    return m, div, fused.SoftmaxOp(x)


def fuse_rows(ops: list[Operation]) -> None:
    """Replace every LayerNorm / softmax among ``ops`` (a walk of the module)."""
    for op in ops:
        if op.parent is None:  # erased by an earlier match
            continue
        found = match_layer_norm(op) if is_op(op, "rsqrt") else match_softmax(op) if is_op(op, "exp") else None
        if found is not None:
            m, result, new = found
            m.replace(result, new)


