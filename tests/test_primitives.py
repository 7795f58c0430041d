"""Every supported primitive, converted and run, against jax.jit on the same inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import check_against_jax

R = np.random.default_rng(0)
X = R.standard_normal((3, 4)).astype(np.float32)
POS = (np.abs(X) + 0.5).astype(np.float32)
UNIT = np.clip(X / 4, -0.9, 0.9).astype(np.float32)
I = R.integers(-5, 6, (3, 4)).astype(np.int32)  # noqa: E741
U = R.integers(0, 200, (3, 4)).astype(np.uint8)
B = X > 0
IMG = R.standard_normal((2, 8, 8, 3)).astype(np.float32)
KER = R.standard_normal((3, 3, 3, 5)).astype(np.float32)

UNARY_FLOAT = {
    "neg": lax.neg, "sign": lax.sign, "floor": lax.floor, "ceil": lax.ceil,
    "round": lambda x: lax.round(x, lax.RoundingMethod.TO_NEAREST_EVEN),
    "is_finite": lax.is_finite, "exp": lax.exp, "exp2": lax.exp2, "expm1": lax.expm1,
    "tanh": lax.tanh, "logistic": lax.logistic, "sin": lax.sin, "cos": lax.cos,
    "atan": lax.atan, "sinh": lax.sinh, "cosh": lax.cosh, "asinh": lax.asinh,
    "abs": lax.abs, "erf": lax.erf, "erfc": lax.erfc, "square": lax.square,
    "integer_pow": lambda x: lax.integer_pow(x, 3), "cbrt": lax.cbrt,
    "reduce_precision": lambda x: lax.reduce_precision(x, 5, 10),
    "stop_gradient": lax.stop_gradient, "convert_bf16": lambda x: x.astype(jnp.bfloat16),
    "convert_f16": lambda x: x.astype(jnp.float16), "to_int": lambda x: x.astype(jnp.int32),
    "bitcast": lambda x: lax.bitcast_convert_type(x, jnp.int32), "copy": jnp.copy,
}
UNARY_POS = {"log": lax.log, "log1p": lax.log1p, "sqrt": lax.sqrt, "rsqrt": lax.rsqrt,
             "lgamma": lax.lgamma, "digamma": lax.digamma, "acosh": lambda x: lax.acosh(x + 1),
             "bessel_i0e": lax.bessel_i0e, "bessel_i1e": lax.bessel_i1e}
UNARY_UNIT = {"asin": lax.asin, "acos": lax.acos, "atanh": lax.atanh, "erf_inv": lax.erf_inv,
              "tan": lax.tan}
BINARY_FLOAT = {"add": lax.add, "sub": lax.sub, "mul": lax.mul, "div": lax.div, "rem": lax.rem,
                "max": lax.max, "min": lax.min, "atan2": lax.atan2, "nextafter": lax.nextafter,
                "eq": lax.eq, "ne": lax.ne, "lt": lax.lt, "le": lax.le, "gt": lax.gt, "ge": lax.ge,
                "pow": lambda a, b: lax.pow(jnp.abs(a) + 0.1, b)}
BINARY_INT = {"add": lax.add, "mul": lax.mul, "div": lambda a, b: lax.div(a, jnp.abs(b) + 1),
              "rem": lambda a, b: lax.rem(a, jnp.abs(b) + 1), "and": lax.bitwise_and,
              "or": lax.bitwise_or, "xor": lax.bitwise_xor, "not": lambda a, b: lax.bitwise_not(a),
              "shift_left": lambda a, b: lax.shift_left(a, jnp.abs(b)),
              "shift_right_arithmetic": lambda a, b: lax.shift_right_arithmetic(a, jnp.abs(b)),
              "shift_right_logical": lambda a, b: lax.shift_right_logical(a, jnp.abs(b)),
              "population_count": lambda a, b: lax.population_count(a), "clz": lambda a, b: lax.clz(a),
              "max": lax.max, "min": lax.min, "lt": lax.lt, "sign": lambda a, b: lax.sign(a),
              "abs": lambda a, b: lax.abs(a), "neg": lambda a, b: -a, "to_float": lambda a, b: a.astype(jnp.float32)}


@pytest.mark.parametrize("name", sorted(UNARY_FLOAT))
def test_unary_float(name):
    check_against_jax(UNARY_FLOAT[name], X)


@pytest.mark.parametrize("name", sorted(UNARY_POS))
def test_unary_positive(name):
    check_against_jax(UNARY_POS[name], POS)


@pytest.mark.parametrize("name", sorted(UNARY_UNIT))
def test_unary_unit(name):
    check_against_jax(UNARY_UNIT[name], UNIT)


@pytest.mark.parametrize("name", sorted(BINARY_FLOAT))
def test_binary_float(name):
    check_against_jax(BINARY_FLOAT[name], X, X[::-1].copy())


@pytest.mark.parametrize("name", sorted(BINARY_INT))
def test_integer_ops(name):
    check_against_jax(BINARY_INT[name], I, I[::-1].copy())


def test_bool_and_uint_ops():
    check_against_jax(lambda a, b: (a & b, a | ~b, a ^ b), B, ~B)
    check_against_jax(lambda u: (u + u, u // 3, u.max(), u.astype(jnp.float32)), U)


STRUCTURAL = {
    "select_n": (lambda x, y: lax.select_n(x > 0, x, y), (X, -X)),
    "select_n_3": (lambda x: lax.select_n(jnp.clip(x, 0, 2).astype(jnp.int32), x, -x, 2 * x), (X,)),
    "where": (lambda x: jnp.where(x > 0, x, 0.5), (X,)),
    "clamp": (lambda x: lax.clamp(-0.5, x, 0.5), (X,)),
    "clip": (lambda x: jnp.clip(x, -1, 1), (X,)),
    "dot": (lambda a, b: a @ b.T, (X, X)),
    "matvec": (lambda a: a @ a[0], (X,)),
    "batched_dot": (lambda a: jnp.einsum("bij,bjk->bik", a, a.transpose(0, 2, 1)), (np.stack([X, X]),)),
    "dot_preferred": (lambda a, b: lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                                                   preferred_element_type=jnp.float32), (X, X)),
    "dot_int8": (lambda a, b: lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                                              preferred_element_type=jnp.int32),
                 (I.astype(np.int8), I.astype(np.int8))),
    "dot_highest": (lambda a, b: jnp.dot(a, b.T, precision=lax.Precision.HIGHEST), (X, X)),
    "conv_nhwc": (lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                        dimension_numbers=("NHWC", "HWIO", "NHWC")), (IMG, KER)),
    "conv_strided_dilated": (lambda x, k: lax.conv_general_dilated(
        x, k, (2, 2), ((1, 2), (0, 1)), lhs_dilation=(1, 1), rhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC")), (IMG, KER)),
    "conv_lhs_dilation": (lambda x, k: lax.conv_general_dilated(
        x, k, (1, 1), ((1, 1), (2, 2)), lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC")), (IMG, KER)),
    "conv_depthwise": (lambda x, k: lax.conv_general_dilated(
        x, k, (1, 1), "SAME", feature_group_count=3, dimension_numbers=("NHWC", "HWIO", "NHWC")),
        (IMG, R.standard_normal((3, 3, 1, 6)).astype(np.float32))),
    "conv_batch_group": (lambda x, k: lax.conv_general_dilated(
        x, k, (1, 1), "VALID", batch_group_count=2, dimension_numbers=("NHWC", "HWIO", "NHWC")),
        (IMG, R.standard_normal((3, 3, 3, 4)).astype(np.float32))),
    "conv_nchw_1d": (lambda x, k: lax.conv(x, k, (1,), "SAME"),
                     (R.standard_normal((2, 3, 10)).astype(np.float32), R.standard_normal((4, 3, 3)).astype(np.float32))),
    "reduce_sum": (lambda x: (x.sum(), x.sum(0), x.sum(1)), (X,)),
    "reduce_max_min": (lambda x: (x.max(0), x.min(1)), (X,)),
    "reduce_prod": (lambda x: x.prod(1), (X,)),
    "reduce_and_or": (lambda b: (b.all(0), b.any(1)), (B,)),
    "reduce_xor": (lambda i: lax.reduce_xor_p.bind(i, axes=(1,)), (I,)),
    "argmax_argmin": (lambda x: (jnp.argmax(x, 1), jnp.argmin(x, 0)), (X,)),
    "mean_var": (lambda x: (x.mean(0), x.var(1), jnp.linalg.norm(x)), (X,)),
    "max_pool": (lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"), (IMG,)),
    "min_pool": (lambda x: lax.reduce_window(x, jnp.inf, lax.min, (1, 3, 3, 1), (1, 1, 1, 1), "SAME"), (IMG,)),
    "avg_pool": (lambda x: lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4, (IMG,)),
    "max_pool_3x3_stride2_padded": (lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                                                ((0, 0), (1, 1), (0, 2), (0, 0))), (IMG,)),
    "max_pool_int8": (lambda x: lax.reduce_window_max_p.bind(
        (x * 40).astype(jnp.int8), window_dimensions=(1, 2, 3, 1), window_strides=(1, 1, 2, 1),
        padding=((0, 0), (0, 1), (1, 1), (0, 0)), base_dilation=(1,) * 4, window_dilation=(1,) * 4), (IMG,)),
    "max_pool_dilated": (lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 1, 1, 1), "VALID",
                                                     window_dilation=(1, 2, 1, 1)), (IMG,)),
    "cumulative": (lambda x: (jnp.cumsum(x, 0), jnp.cumprod(x, 1), lax.cummax(x, 1),
                              lax.cummin(x, 0, reverse=True), lax.cumlogsumexp(x, 1)), (X,)),
    "broadcast_in_dim": (lambda x: lax.broadcast_in_dim(x, (2, 3, 4), (1, 2)), (X,)),
    "reshape": (lambda x: x.reshape(4, 3), (X,)),
    "squeeze_expand": (lambda x: (jnp.squeeze(x[None]), jnp.expand_dims(x, 1)), (X,)),
    "transpose": (lambda x: jnp.transpose(x, (2, 0, 3, 1)), (IMG,)),
    "rev": (lambda x: jnp.flip(x, (0, 1)), (X,)),
    "slice": (lambda x: (x[1:, ::2], x[..., 1]), (X,)),
    "dynamic_slice": (lambda x, i: lax.dynamic_slice(x, (i, 1), (2, 2)), (X, np.int32(1))),
    "dynamic_update_slice": (lambda x, i: lax.dynamic_update_slice(x, jnp.ones((2, 2)), (i, i)), (X, np.int32(1))),
    "gather_take": (lambda x, idx: (x[idx], jnp.take(x, idx, axis=1, mode="clip")), (X, np.array([0, 2, 1], np.int32))),
    "gather_embedding": (lambda table, ids: table[ids], (R.standard_normal((10, 4)).astype(np.float32), np.array([[1, 2], [9, 0]], np.int32))),
    "gather_fill": (lambda x, idx: jnp.take(x, idx, axis=0, mode="fill", fill_value=-1.0), (X, np.array([0, 5], np.int32))),
    "take_along_axis": (lambda x: jnp.take_along_axis(x, jnp.argsort(x, 1), 1), (X,)),
    "concatenate": (lambda x: jnp.concatenate([x, x * 2, x[:1]], 0), (X,)),
    "stack": (lambda x: jnp.stack([x, -x], -1), (X,)),
    "pad": (lambda x: (jnp.pad(x, ((1, 2), (0, 1))), lax.pad(x, 0.0, ((1, 1, 1), (-1, 0, 0)))), (X,)),
    "iota_arange": (lambda x: x + jnp.arange(4, dtype=jnp.float32) + lax.iota(jnp.float32, 4), (X,)),
    "sort": (lambda x: (jnp.sort(x, 0), jnp.argsort(x, 1)), (X,)),
    "sort_multi": (lambda x, i: lax.sort((i, x), num_keys=1), (X, I)),
    "top_k": (lambda x: lax.top_k(x, 2), (X,)),
    "scatter_add": (lambda x, idx: x.at[idx].add(1.0), (X, np.array([0, 2, 0], np.int32))),
    "scatter_set": (lambda x, idx: x.at[idx, 1].set(7.0), (X, np.array([0, 2], np.int32))),
    "scatter_mul_min_max": (lambda x, idx: (x.at[idx].multiply(2.0), x.at[idx].min(0.0), x.at[idx].max(0.0)), (X, np.array([1, 2], np.int32))),
    "segment_sum": (lambda x, seg: jax.ops.segment_sum(x, seg, num_segments=2), (X, np.array([0, 1, 1], np.int32))),
    "split": (lambda x: jnp.split(x, 2, axis=1), (X,)),
    "one_hot": (lambda i: jax.nn.one_hot(i, 5), (np.array([0, 3, 4], np.int32),)),
    "softmax_logsumexp": (lambda x: (jax.nn.softmax(x), jax.nn.log_softmax(x), jax.nn.logsumexp(x, 1)), (X,)),
    "activations": (lambda x: (jax.nn.relu(x), jax.nn.relu6(x), jax.nn.gelu(x), jax.nn.gelu(x, approximate=False),
                               jax.nn.silu(x), jax.nn.sigmoid(x), jax.nn.elu(x), jax.nn.leaky_relu(x),
                               jax.nn.softplus(x), jax.nn.hard_tanh(x), jax.nn.celu(x), jax.nn.selu(x),
                               jax.nn.mish(x), jax.nn.hard_swish(x), jax.nn.standardize(x)), (X,)),
    "jnp_misc": (lambda x: (jnp.tril(x), jnp.triu(x), jnp.roll(x, 1, 1), jnp.tile(x, (2, 1)), jnp.repeat(x, 2, 0),
                            jnp.outer(x[0], x[1]), jnp.cross(x[:, :3], x[::-1, :3]), jnp.diff(x), jnp.round(x, 2),
                            jnp.maximum(x, 0.1), jnp.nan_to_num(x / 0.0), jnp.isnan(x), jnp.mod(x, 0.7),
                            jnp.floor_divide(x, 0.3), jnp.linspace(0, 1, 4) * x, jnp.eye(4) @ x.T), (X,)),
    "optimization_barrier": (lambda x: lax.optimization_barrier(x) * 2, (X,)),
    "weak_scalar_python": (lambda x: x * 2 + 1 - x / 3, (X,)),
    "scalar_input": (lambda x, s: x * s, (X, np.float32(3.0))),
    "image_resize": (lambda x: jax.image.resize(x, (2, 4, 4, 3), "bilinear"), (IMG,)),
}


@pytest.mark.parametrize("name", sorted(STRUCTURAL))
def test_structural(name):
    fn, args = STRUCTURAL[name]
    check_against_jax(fn, *args)


def test_cond_switch():
    def f(x, i):
        a = lax.cond(x.sum() > 0, lambda v: v * 2, lambda v: v - 1, x)
        b = lax.switch(i, [lambda v: v + 1, lambda v: v * v, lambda v: -v], x)
        return a, b
    for i in (0, 1, 2, 7):
        check_against_jax(f, X, np.int32(i))


def test_while_and_fori_loops():
    def f(x, n):
        a = lax.while_loop(lambda c: c[1] < n, lambda c: (c[0] * 1.5 + 1, c[1] + 1), (x, 0))[0]
        b = lax.fori_loop(0, n, lambda i, v: v + i, x)      # dynamic trip count -> while
        c = lax.fori_loop(0, 5, lambda i, v: v * 0.9, x)     # static trip count -> scan
        return a, b, c
    check_against_jax(f, X, np.int32(4))


def test_scan_rnn_with_consts_and_reverse():
    w = jnp.asarray(R.standard_normal((4, 4)).astype(np.float32) * 0.3)

    def f(xs):
        def cell(h, x):
            h = jnp.tanh(h @ w + x)
            return h, h.sum()
        h, ys = lax.scan(cell, jnp.zeros(4), xs)
        h2, ys2 = lax.scan(cell, h, xs, reverse=True, unroll=2)
        return h, ys, h2, ys2
    check_against_jax(f, R.standard_normal((6, 4)).astype(np.float32))


def test_nested_control_flow_and_closure_constants():
    table = jnp.asarray(R.standard_normal((100,)).astype(np.float32))

    def f(x):
        def body(i, v):
            return lax.cond(i % 2 == 0, lambda u: u + table[:4].sum(), lambda u: u * 0.5, v)
        return lax.fori_loop(0, 3, body, x)
    check_against_jax(f, X)


def test_custom_jvp_vjp_and_remat_are_inlined():
    @jax.custom_vjp
    def clip_grad(x):
        return x * 2

    clip_grad.defvjp(lambda x: (x * 2, None), lambda _, g: (g,))

    @jax.checkpoint
    def block(x):
        return jnp.sin(x) * 3

    def f(x):
        return jax.nn.relu(x) + clip_grad(x) + block(x) + jax.jit(lambda y: y + 1)(x)
    model = check_against_jax(f, X)
    names = {op.name for op in model.module.walk()}
    assert not any("jit" in n or "custom" in n or "checkpoint" in n for n in names)
