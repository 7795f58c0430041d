"""Kernels: for each IR op, the jax.lax code that executes it.

A kernel factory sees the op once (when the program is built) and returns a function
``kernel(weights, *inputs) -> outputs``; parameters are decoded then, not per call.
Primitive ops re-bind their jax primitive; control-flow ops run their regions through
lax.switch / lax.while_loop / lax.scan.
"""

from __future__ import annotations

import contextvars
import itertools
from collections.abc import Callable

from jax import lax
from xdsl.ir import Operation

from jaxlite.dialects import fused, jlax
from jaxlite.dialects.params import decode
from jaxlite.runtime.program import BlockProgram, Kernel, captures_of

_FACTORIES: dict[type[Operation], Callable[[Operation], Kernel]] = {}


class NoKernelError(LookupError):
    pass


def register(*op_types: type[Operation]):
    def deco(factory):
        for t in op_types:
            _FACTORIES[t] = factory
        return factory
    return deco


def kernel_for(op: Operation) -> Kernel:
    for cls in type(op).__mro__:
        if cls in _FACTORIES:
            return _FACTORIES[cls](op)
    raise NoKernelError(f"no kernel for {op.name}")


# The kernel chooser of the program being built: the programs of loop and branch regions,
# built while their op's kernel is made, use the same one as the block around them (the
# native int8 kernels inside an LSTM's scan, say).
_CHOOSER: contextvars.ContextVar[Callable[[Operation], Kernel] | None] = \
    contextvars.ContextVar("jaxlite_kernel_chooser", default=None)


def program_for(block, kernels: Callable[[Operation], Kernel] | None = None) -> BlockProgram:
    """The program of a block; ``kernels`` may override the kernel of some ops (inherited
    by the regions of its ops when not given)."""
    chooser = kernels or _CHOOSER.get() or kernel_for
    token = _CHOOSER.set(chooser)
    try:
        return BlockProgram(block, chooser)
    finally:
        _CHOOSER.reset(token)


@register(jlax.LaxOp)
def _primitive(op: jlax.LaxOp) -> Kernel:
    fn = jlax.evaluate(op.PRIMITIVE, jlax._params_key(op.attributes), op.OPTIONAL_PARAMS)
    return lambda weights, *xs: fn(*xs)


@register(fused.FusedOp)
def _fused(op: fused.FusedOp) -> Kernel:
    fn = jlax.evaluate(op.PRIMITIVE, jlax._params_key(op.primitive_params()), op.OPTIONAL_PARAMS)
    activation = op.activation

    def run(weights, lhs, rhs, bias=None):
        return (fused.fused_epilogue(fn(lhs, rhs)[0], bias, activation),)
    return run


@register(fused.LayerNormOp)
def _layer_norm(op: fused.LayerNormOp) -> Kernel:
    epsilon = op.epsilon
    return lambda weights, x, *values: (fused.layer_norm(x, *op.vectors(values), epsilon=epsilon),)


@register(fused.SoftmaxOp)
def _softmax(op: fused.SoftmaxOp) -> Kernel:
    return lambda weights, x: (fused.softmax(x),)


def float16_matmul_kernel(op: Operation) -> Kernel | None:
    """For a dot/conv whose kernel is a float16 weight read through jquant.upcast: compute
    in float16 with float32 accumulation (the GPU path of quantize="float16")."""
    import jax.numpy as jnp

    from jaxlite.dialects import quant
    from jaxlite.dialects.params import encode

    is_fused = isinstance(op, fused.FusedOp)
    if not (is_fused or (isinstance(op, jlax.LaxOp) and op.PRIMITIVE in ("dot_general", "conv_general_dilated"))):
        return None
    up = op.operands[1].owner
    if not isinstance(up, quant.UpcastOp) or not isinstance(up.input.owner, jlax.WeightOp):
        return None
    name = up.input.owner.weight_name
    params = dict(op.primitive_params() if is_fused else op.attributes)
    params["preferred_element_type"] = encode(jnp.dtype(jnp.float32))
    fn = jlax.evaluate(op.PRIMITIVE, jlax._params_key(params), op.OPTIONAL_PARAMS)
    activation = op.activation if is_fused else "none"
    half = jnp.dtype(jnp.float16)

    def run(weights, lhs, _rhs_f32, bias=None):
        w = weights[name]
        y = fn(lhs.astype(half), w.astype(half))[0]
        return (fused.fused_epilogue(y, bias, activation),)
    return run


@register(jlax.WeightOp)
def _weight(op: jlax.WeightOp) -> Kernel:
    name = op.weight_name
    return lambda weights: (weights[name],)


@register(jlax.ConstantOp)
def _constant(op: jlax.ConstantOp) -> Kernel:
    value = op.to_array()
    return lambda weights: (value,)


def _split(xs, n_operands):
    return list(xs[:n_operands]), list(xs[n_operands:])


@register(jlax.CondOp)
def _cond(op: jlax.CondOp) -> Kernel:
    programs = [program_for(r.block) for r in op.branches]
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
def _while(op: jlax.WhileOp) -> Kernel:
    cond_p, body_p = program_for(op.cond.block), program_for(op.body.block)
    nc, nb = op.int_param("cond_nconsts"), op.int_param("body_nconsts")
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
def _scan(op: jlax.ScanOp) -> Kernel:
    body_p = program_for(op.body.block)
    nconst, ncarry = op.int_param("num_consts"), op.int_param("num_carry")
    length, unroll, reverse = op.int_param("length"), op.int_param("unroll"), op.reverse
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


__all__ = ["kernel_for", "program_for", "register", "decode", "NoKernelError"]


from jaxlite.runtime import quant_kernels  # noqa: E402,F401  (registers the jquant kernels)


@register(jlax.PRIMITIVE_OPS["reduce_window_max"], jlax.PRIMITIVE_OPS["reduce_window_min"])
def _window_extremum(op: jlax.LaxOp) -> Kernel:
    """Max/min pooling as the elementwise extremum of one strided slice per window offset:
    XLA:CPU fuses those into one loop, several times faster than its reduce-window (ResNet's
    3x3/2 int8 max-pool: 0.72 ms of 10 ms). Exact: max and min do not round. Dilated
    windows keep lax's own reduce_window."""
    params = {k: decode(v) for k, v in op.attributes.items()}
    window, strides = params["window_dimensions"], params["window_strides"]
    if any(d != 1 for d in (*params["base_dilation"], *params["window_dilation"])):
        return _primitive(op)
    padding = params["padding"]
    is_max = op.PRIMITIVE == "reduce_window_max"
    out_shape = tuple(op.results[0].type.get_shape())
    combine = lax.max if is_max else lax.min

    def run(weights, x):
        import jax.numpy as jnp

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
