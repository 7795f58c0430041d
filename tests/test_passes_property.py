"""Property: the whole default pipeline preserves results on random graphs of elementwise,
broadcast, reshape and dot ops mixing inputs, constants and weights."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxlite
from conftest import assert_tree_close

SHAPE = (4, 6)
CONSTS = st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0, 3.0, -0.25])
CONST_STEP = st.tuples(st.sampled_from(["add_c", "mul_c", "sub_c", "div_c", "c_sub", "c_mul"]),
                       st.integers(0, 99), CONSTS)
STEP = st.one_of(
    CONST_STEP, CONST_STEP, CONST_STEP,  # constant chains are what canonicalize rewrites most
    st.tuples(st.sampled_from(["add", "sub", "mul"]), st.integers(0, 99), st.integers(0, 99)),
    st.tuples(st.sampled_from(["neg", "tanh", "relu", "reshape_roundtrip", "transpose_twice",
                               "broadcast_reduce", "dot_weight", "weight_add", "like_terms"]),
              st.integers(0, 99), st.integers(0, 99)),
)


def build(steps, seed):
    rng = np.random.default_rng(seed)
    w_dot = jnp.asarray(rng.standard_normal((SHAPE[1], SHAPE[1])).astype(np.float32) * 0.3)
    w_add = jnp.asarray(rng.standard_normal((1, SHAPE[1])).astype(np.float32))
    w_const = jnp.asarray(rng.standard_normal(SHAPE).astype(np.float32))

    def fn(x):
        values = [x]
        for kind, i, j in steps:
            a = values[-1 if i % 4 else -min(2, len(values))]  # mostly chains on the last value
            if kind == "add_c":
                v = a + j
            elif kind == "mul_c":
                v = a * j
            elif kind == "sub_c":
                v = a - j
            elif kind == "div_c":
                v = a / (j if j != 0 else 4.0)
            elif kind == "c_sub":
                v = j - a
            elif kind == "c_mul":
                v = j * a * 2.0
            elif kind in ("add", "sub", "mul"):
                b = values[-1 - j % len(values)]
                v = {"add": a + b, "sub": a - b, "mul": a * b}[kind]
            elif kind == "neg":
                v = jnp.negative(jnp.negative(jnp.negative(a)))
            elif kind == "tanh":
                v = jnp.tanh(a)
            elif kind == "relu":
                v = jax.nn.relu(a)
            elif kind == "reshape_roundtrip":
                v = a.reshape(-1).reshape(SHAPE[1], SHAPE[0]).reshape(SHAPE)
            elif kind == "transpose_twice":
                v = a.T.T + 0.0
            elif kind == "broadcast_reduce":
                v = jnp.broadcast_to(a, (3, *SHAPE)).sum(0) / 3.0
            elif kind == "dot_weight":
                v = jnp.tanh(a @ w_dot + w_add)
            elif kind == "weight_add":
                v = (a - w_add) * 0.5 + w_add * (w_const * 2.0 + 1.0)  # an all-constant subgraph
            else:  # like_terms
                v = 3 * a + 4 * a - 2 * a
            values.append(v)
        return values[-1], values[len(values) // 2]

    return fn


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=10), seed=st.integers(0, 3))
def test_default_pipeline_preserves_results(steps, seed):
    fn = build(steps, seed)
    x = np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)
    ref = jax.jit(fn)(x)
    model = jaxlite.convert(fn, x)
    assert_tree_close(model.compile()(x), ref, rtol=2e-4, atol=2e-5)
