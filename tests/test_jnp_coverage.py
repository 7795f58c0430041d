"""jax.numpy / jax.scipy / transforms a new user reaches for, against jax.jit."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlite
from conftest import check_against_jax

R = np.random.default_rng(0)
A = R.standard_normal((4, 4)).astype(np.float32)
SPD = (A @ A.T + 4 * np.eye(4)).astype(np.float32)
V = R.standard_normal(8).astype(np.float32)

CASES = {
    "cholesky": (jnp.linalg.cholesky, SPD),
    "solve": (lambda a: jnp.linalg.solve(a, a[0]), SPD),
    "inv": (jnp.linalg.inv, SPD),
    "det_slogdet": (lambda a: (jnp.linalg.det(a), jnp.linalg.slogdet(a)[1]), SPD),
    "qr": (lambda a: jnp.abs(jnp.linalg.qr(a)[1]), A),
    "eigh": (lambda a: jnp.linalg.eigh(a)[0], SPD),
    "svd_norm": (lambda a: (jnp.linalg.svd(a, compute_uv=False), jnp.linalg.norm(a, 2)), A),
    "solve_triangular": (lambda a: jax.scipy.linalg.solve_triangular(jnp.tril(a), a[0], lower=True), SPD),
    "expm": (lambda a: jax.scipy.linalg.expm(a * 0.1), A),
    "median_percentile": (lambda x: (jnp.median(x), jnp.percentile(x, 30)), V),
    "searchsorted_interp": (lambda x: (jnp.searchsorted(jnp.sort(x), 0.1), jnp.interp(x, jnp.sort(x), x)), V),
    "histogram_bincount": (lambda x: (jnp.histogram(x, bins=4, range=(-2, 2))[0],
                                      jnp.bincount((jnp.abs(x) * 3).astype(jnp.int32), length=10)), V),
    "convolve": (lambda x: jnp.convolve(x, x[:3]), V),
    "dot_product_attention": (lambda q: jax.nn.dot_product_attention(q, q, q), R.standard_normal((1, 4, 2, 8)).astype(np.float32)),
    "special": (lambda x: (jax.scipy.special.logsumexp(x), jax.scipy.special.gammaln(jnp.abs(x) + 1),
                           jax.scipy.special.betainc(2.0, 3.0, jax.nn.sigmoid(x)), jnp.sinc(x)), V),
    "approx_max_k": (lambda x: jax.lax.approx_max_k(x, 2), V),
    "nonzero_argwhere": (lambda x: (jnp.argwhere(x > 0, size=3), jnp.nonzero(x > 0, size=3)[0]), V),
    "conv_transpose": (lambda x: jax.lax.conv_transpose(x, jnp.ones((3, 3, 2, 4)), (2, 2), "SAME",
                                                        dimension_numbers=("NHWC", "HWIO", "NHWC")),
                       R.standard_normal((1, 4, 4, 2)).astype(np.float32)),
    "int64_bool_uint_outputs": (lambda x: ((x * 3).astype(jnp.int64), x > 0,
                                           jax.lax.bitcast_convert_type(x, jnp.uint32) >> 3), V),
    "ravel_pytree": (lambda x: jax.flatten_util.ravel_pytree({"a": x, "b": x})[0], V),
    "lax_map_vmap_cond": (lambda x: (jax.lax.map(lambda r: r * 2, x.reshape(2, 4)),
                                     jax.vmap(lambda e: jax.lax.cond(e > 0, lambda: e, lambda: -e))(x)), V),
    "grad_and_jacobian": (lambda x: (jax.grad(lambda v: (jnp.sin(v) ** 2).sum())(x), jax.jacfwd(jnp.tanh)(x)), V),
    "associative_scan": (lambda x: jax.lax.associative_scan(jnp.add, x), V),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_jnp_function(name):
    fn, x = CASES[name]
    check_against_jax(fn, x, rtol=1e-4, atol=1e-5)


def test_unsupported_inside_library_code_points_at_the_users_line():
    def fn(x):
        return jnp.abs(jnp.fft.rfft(x))  # complex numbers are not supported

    with pytest.raises(jaxlite.UnsupportedPrimitiveError) as info:
        jaxlite.convert(fn, V)
    assert "fft" in str(info.value) and "test_jnp_coverage.py:" in str(info.value)


def test_random_numbers_typed_and_raw_keys_match_jax_and_unused_ones_are_pruned():
    key = jax.random.key(42)          # closed over: stored as key data, wrapped in the IR
    raw = jax.random.PRNGKey(1)

    def fn(x, seed):
        k = jax.random.fold_in(jax.random.split(jax.random.key(3), 4)[1], seed)
        unused = jax.random.normal(jax.random.key(9), (100,))  # noqa: F841
        noise = jax.random.normal(k, x.shape) + jax.random.uniform(key, x.shape) + jax.random.uniform(raw, x.shape)
        keep = jax.random.bernoulli(jax.random.PRNGKey(0), 0.5, x.shape)  # dropout-style mask
        return jnp.where(keep, x + noise, 0.0)

    x = np.ones((3, 4), np.float32)
    seed = np.uint32(7)
    traced = jaxlite.convert(fn, x, seed, passes="")
    model = check_against_jax(fn, x, seed, rtol=0, atol=0)
    assert "!jlax.key<\"threefry2x32\">" in model.ir()
    assert traced.ir().count("jlax.random_seed") == 3 and model.ir().count("jlax.random_seed") == 2


def test_key_arrays_as_inputs_get_a_clear_error():
    with pytest.raises(jaxlite.ConversionError, match="PRNG key array.*key_data"):
        jaxlite.convert(lambda k: jax.random.normal(k, (2,)), jax.random.key(0))
