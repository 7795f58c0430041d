"""FloatGemm (the native targets): float32 dense layers match jax.jit for every width,
activation and layout -- those of at most four rows (a batch-1 model's) always, more rows
where oneDNN has no brgemm kernel for them (AVX2 CPUs); the others go to oneDNN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlite
from jaxlite.runtime import cpu_kernels
from jaxlite.runtime import native_calls as native

pytestmark = pytest.mark.skipif(not native.available(), reason="needs jaxlite's native CPU kernels (AVX2 or AVX-512 VNNI)")
ACTIVATIONS = [lambda y: y, jax.nn.relu, jax.nn.relu6, jax.nn.sigmoid, jnp.tanh, jax.nn.silu,
               lambda y: jax.nn.gelu(y, approximate=True), lambda y: jax.nn.gelu(y, approximate=False)]


def _served_by_float_gemm(exe) -> bool:
    return exe.targets_used.get(native.target(), 0) > 0


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("k, n", [(2, 1), (33, 15), (64, 16), (7, 17), (256, 65), (16, 130)])
def test_every_width_matches_jax(rng, rows, k, n):
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)

    def fn(x):
        return jax.nn.relu(x @ w + b)

    exe = jaxlite.convert(fn, x).compile()
    assert _served_by_float_gemm(exe) and exe.direct
    np.testing.assert_allclose(exe(x), jax.jit(fn)(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", range(len(ACTIVATIONS)))
def test_every_fused_activation(rng, activation):
    w = rng.standard_normal((40, 24)).astype(np.float32) * 0.3
    b = rng.standard_normal(24).astype(np.float32)
    x = rng.standard_normal((1, 40)).astype(np.float32)

    def fn(x):
        return ACTIVATIONS[activation](x @ w + b)

    model = jaxlite.convert(fn, x)
    exe = model.compile()
    assert _served_by_float_gemm(exe)
    np.testing.assert_allclose(exe(x), jax.jit(fn)(x), rtol=2e-5, atol=2e-5)


def test_transposed_inputs_row_biases_and_weights_stored_in_lower_precision(rng):
    w = rng.standard_normal((6, 5)).astype(np.float32)
    per_row = rng.standard_normal((3, 1)).astype(np.float32)  # a bias along rows: XLA adds it

    def fn(x):  # x is [K, M]: the kernel reads it transposed
        return jax.nn.relu(jnp.einsum("km,kn->mn", x, w) + per_row)

    x = rng.standard_normal((6, 3)).astype(np.float32)
    exe = jaxlite.convert(fn, x).compile()
    assert _served_by_float_gemm(exe)
    np.testing.assert_allclose(np.asarray(exe(x)), jax.jit(fn)(x), rtol=1e-5, atol=1e-5)
    for mode, tolerance in (("float16", 2e-3), ("bfloat16", 1e-2), ("int8-weights", 3e-2)):
        exe = jaxlite.convert(fn, x, quantize=mode).compile()
        assert _served_by_float_gemm(exe)
        ref = np.asarray(jax.jit(fn)(x))
        assert np.linalg.norm(np.asarray(exe(x)) - ref) <= tolerance * np.linalg.norm(ref)


def test_a_bigger_weight_at_batch_1_is_not_its(rng):
    """A weight over FEW_ROWS_MAX_WEIGHT floats: read by one core here, by every core in
    oneDNN's GEMM."""
    w = rng.standard_normal((1025, 1024)).astype(np.float32)
    x = rng.standard_normal((1, 1025)).astype(np.float32)
    exe = jaxlite.convert(lambda x: x @ w, x).compile()
    assert not _served_by_float_gemm(exe)
    np.testing.assert_allclose(np.asarray(exe(x)), x @ w, rtol=2e-4, atol=2e-3)


@pytest.mark.parametrize("rows, k, n", [(5, 8, 8), (7, 3, 17), (13, 64, 33), (128, 256, 96), (37, 300, 70),
                                        (4096, 32, 16), (256, 512, 300)])
@pytest.mark.parametrize("activation", [1, 6])
def test_many_rows_match_jax(rng, rows, k, n, activation):
    """Row tiles of 1 to 6 rows, column tails, panel blocks, and (the last two: over 2M
    multiply-adds) the split over threads, by rows and by columns; served by FloatGemm exactly
    where oneDNN has no brgemm kernel."""
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)

    def fn(x):
        return ACTIVATIONS[activation](x @ w + b)

    exe = jaxlite.convert(fn, x).compile()
    assert _served_by_float_gemm(exe) == (not cpu_kernels.onednn_brgemm_dense(rows, k, n))
    np.testing.assert_allclose(np.asarray(exe(x)), jax.jit(fn)(x), rtol=2e-5, atol=2e-5)


def test_the_jitted_path_gives_the_same_results(rng):
    w = rng.standard_normal((32, 20)).astype(np.float32)
    x = rng.standard_normal((2, 32)).astype(np.float32)
    model = jaxlite.convert(lambda x: jnp.tanh(x @ w), x)
    direct, jitted = model.compile(), model.compile(direct=False)
    assert direct.direct and not jitted.direct
    np.testing.assert_array_equal(direct(x), np.asarray(jitted(x)))


@pytest.mark.parametrize("activation", range(len(ACTIVATIONS)))
def test_nan_and_inf_propagate_as_in_jax(rng, activation):
    w = rng.standard_normal((8, 20)).astype(np.float32)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    x[0, 2], x[1, 5] = np.nan, np.inf

    def fn(x):
        return ACTIVATIONS[activation](x @ w)

    exe = jaxlite.convert(fn, x).compile()
    assert _served_by_float_gemm(exe)
    np.testing.assert_allclose(exe(x), jax.jit(fn)(x), rtol=2e-5, atol=2e-5)  # NaN where jax has NaN


@pytest.mark.parametrize("spec, lhs, rhs, bmnk", [
    ("bqhd,bkhd->bhqk", (1, 128, 4, 64), (1, 128, 4, 64), (4, 128, 128, 64)),   # attention's scores: in place
    ("bhqk,bkhd->bqhd", (1, 4, 128, 128), (1, 128, 4, 64), (4, 128, 64, 128)),  # the weighted sum: v transposed
    ("mk,nk->mn", (37, 100), (21, 100), (1, 37, 21, 100)),                       # a column tail, odd rows
    ("bmk,bkn->bmn", (3, 50, 40), (3, 40, 35), (3, 50, 35, 40)),
])
def test_products_of_two_activations_match_jax(rng, spec, lhs, rhs, bmnk):
    """Served by FloatActGemm exactly where oneDNN has no brgemm kernel for the batch."""
    x, y = (rng.standard_normal(s).astype(np.float32) for s in (lhs, rhs))

    def fn(x, y):
        return jnp.einsum(spec, x, y)

    exe = jaxlite.convert(fn, x, y).compile()
    np.testing.assert_allclose(np.asarray(exe(x, y)), np.asarray(jax.jit(fn)(x, y)), rtol=1e-4, atol=1e-4)
    b, m, n, k = bmnk
    assert _served_by_float_gemm(exe) == (b * m * n * k >= cpu_kernels.MIN_ACTIVATION_DOT_MACS
                                          and not cpu_kernels.onednn_brgemm_batch(b, m, k, n))


def test_a_nan_in_one_activation_spreads_as_in_jax(rng):
    x, y = (rng.standard_normal((2, 64, 48)).astype(np.float32) for _ in range(2))
    x[1, 3, 7], y[0, 5, 2] = np.nan, np.inf

    def fn(x, y):
        return jnp.einsum("bmk,bnk->bmn", x, y)

    exe = jaxlite.convert(fn, x, y).compile()
    np.testing.assert_allclose(np.asarray(exe(x, y)), np.asarray(jax.jit(fn)(x, y)), rtol=1e-4, atol=1e-4)


def test_a_product_onednn_refuses_is_not_left_to_it():
    from jaxlite.runtime import onednn_calls as onednn

    def refused():
        raise onednn.OnednnRefused("no primitive for this shape")

    assert not cpu_kernels._onednn_brgemm(refused)


@pytest.mark.parametrize("rows, k, n", [(7, 3, 17), (128, 256, 200), (256, 512, 300)])
def test_many_rows_on_float_gemm_whatever_onednn_has(rng, monkeypatch, rows, k, n):
    """FloatGemm's many-rows tiles (6x16 on AVX2, 6x64 with AVX-512) and FloatActGemm, also on
    CPUs where oneDNN's brgemm would take these products."""
    monkeypatch.setattr(cpu_kernels, "onednn_brgemm_dense", lambda *shape: False)
    monkeypatch.setattr(cpu_kernels, "onednn_brgemm_batch", lambda *shape: False)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)

    def fn(x):
        h = jax.nn.gelu(x @ w + b)
        return h, jnp.einsum("mn,kn->mk", h, h)  # a product of two activations

    exe = jaxlite.convert(fn, x).compile()
    act_product_is_native = rows * rows * n >= cpu_kernels.MIN_ACTIVATION_DOT_MACS
    assert exe.targets_used.get(native.target(), 0) == 1 + act_product_is_native
    for got, want in zip(exe(x), jax.jit(fn)(x), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-4)
