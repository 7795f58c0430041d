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
