"""The ``xla`` target: every op as jax.lax code, compiled by XLA with the rest of the program.

Ops with semantics of their own (jax primitives, fused ops, row ops) run their dialect's
``evaluate`` -- the same code constant folding uses -- so there is one definition of what
an op computes. Weights and constants are read from the placed arrays; control-flow ops
run their regions' programs through lax.switch / lax.while_loop / lax.scan.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
from jax import lax
from xdsl.ir import Operation

from jaxlite.dialects import jlax
from jaxlite.dialects.params import decode
from jaxlite.dialects.primitive import PrimitiveOp
from jaxlite.runtime.program import captures_of
from jaxlite.runtime.registry import LoweringContext, register


def evaluated(op: Operation):
    """The kernel that runs what ``op.evaluate`` computes."""
    return lambda weights, *xs: op.evaluate(*xs)


@register(Operation)
def _evaluate(op: Operation, ctx: LoweringContext):
    """Any op with semantics of its own (``evaluate``) runs them; the others have specific
    rules (below) or no kernel."""
    return evaluated(op) if hasattr(op, "evaluate") else None


@register(jlax.WeightOp)
def _weight(op: jlax.WeightOp, ctx: LoweringContext):
    name = op.weight_name
    # None where the weight was not placed: then every reader takes it another way
    # (Lowering.read_weights places all others)
    return lambda weights: (weights.get(name),)


@register(jlax.ConstantOp)
def _constant(op: jlax.ConstantOp, ctx: LoweringContext):
    value = op.to_array()
    return lambda weights: (value,)


def _split(xs, n_operands):
    return list(xs[:n_operands]), list(xs[n_operands:])


@register(jlax.CondOp)
def _cond(op: jlax.CondOp, ctx: LoweringContext):
    programs = [ctx.program(r.block) for r in op.branches]
    n = len(op.operands)
    outer = captures_of(op)

    def run(weights, *xs):
        operands, captured = _split(xs, n)
        env = dict(zip(outer, captured, strict=True))

        def branch(program):
            captured_values = [env[v] for v in program.captures]
            return lambda *a: tuple(program(weights, a, captured_values))

        return list(lax.switch(operands[0], [branch(p) for p in programs], *operands[1:]))
    return run


@register(jlax.WhileOp)
def _while(op: jlax.WhileOp, ctx: LoweringContext):
    cond_p, body_p = ctx.program(op.cond.block), ctx.program(op.body.block)
    nc, nb = op.cond_nconsts, op.body_nconsts
    n = len(op.operands)
    outer = captures_of(op)

    def run(weights, *xs):
        operands, captured = _split(xs, n)
        env = dict(zip(outer, captured, strict=True))
        cconsts, bconsts, init = operands[:nc], operands[nc:nc + nb], operands[nc + nb:]
        ccap = [env[v] for v in cond_p.captures]
        bcap = [env[v] for v in body_p.captures]
        out = lax.while_loop(
            lambda c: cond_p(weights, [*cconsts, *c], ccap)[0],
            lambda c: tuple(body_p(weights, [*bconsts, *c], bcap)),
            tuple(init))
        return list(out)
    return run


@register(jlax.ScanOp)
def _scan(op: jlax.ScanOp, ctx: LoweringContext):
    body_p = ctx.program(op.body.block)
    nconst, ncarry = op.num_consts, op.num_carry
    length, unroll, reverse = op.length, op.unroll, op.reverse
    n = len(op.operands)
    outer = captures_of(op)

    def run(weights, *xs):
        operands, captured = _split(xs, n)
        env = dict(zip(outer, captured, strict=True))
        consts = operands[:nconst]
        carry, scanned = operands[nconst:nconst + ncarry], operands[nconst + ncarry:]
        cap = [env[v] for v in body_p.captures]

        def step(c, x):
            outs = body_p(weights, [*consts, *c, *x], cap)
            return tuple(outs[:ncarry]), tuple(outs[ncarry:])

        final, ys = lax.scan(step, tuple(carry), tuple(scanned), length=length,
                             reverse=reverse, unroll=unroll)
        return [*final, *ys]
    return run


@register(jlax.PRIMITIVE_OPS["reduce_window_max"], jlax.PRIMITIVE_OPS["reduce_window_min"])
def _window_extremum(op: jlax.LaxOp, ctx: LoweringContext):
    return window_extremum(op)


def window_extremum(op: PrimitiveOp):
    """Max/min pooling as the elementwise extremum of one strided slice per window offset:
    XLA:CPU fuses those into one loop, several times faster than its reduce-window. Exact:
    max and min do not round. Dilated windows keep lax's own reduce_window (None: the next
    rule)."""
    params = {k: decode(v) for k, v in op.attributes.items()}
    window, strides = params["window_dimensions"], params["window_strides"]
    if any(d != 1 for d in (*params["base_dilation"], *params["window_dilation"])):
        return None
    padding = params["padding"]
    is_max = op.PRIMITIVE == "reduce_window_max"
    out_shape = tuple(op.results[0].type.get_shape())
    combine = lax.max if is_max else lax.min

    def run(weights, x):
        if jnp.issubdtype(x.dtype, jnp.floating):
            fill = -jnp.inf if is_max else jnp.inf
        else:
            info = jnp.iinfo(x.dtype)
            fill = info.min if is_max else info.max
        if any(lo or hi for lo, hi in padding):
            x = lax.pad(x, jnp.array(fill, x.dtype), [(lo, hi, 0) for lo, hi in padding])
        out = None
        for offsets in itertools.product(*[range(w) for w in window]):
            limit = [o + (n - 1) * s + 1 for o, n, s in zip(offsets, out_shape, strides, strict=True)]
            part = lax.slice(x, offsets, limit, strides)
            out = part if out is None else combine(out, part)
        return (out,)
    return run
