"""Quantized models propagate NaN/Inf like the float model: a row (sample) with a non-finite
input gives a non-finite output wherever jax.jit's float model does, and the other rows
are exactly what they are without it -- on the native kernels, the direct path and XLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxlite
from jaxlite.dialects import int8, jlax, quant
from jaxlite.examples import transformer
from jaxlite.runtime import native_calls

NATIVE = native_calls.target() is not None
PATHS = [pytest.param(None, id="default"), pytest.param(["xla"], id="xla")]


def _mlp(rng):
    w1 = rng.normal(size=(48, 64)).astype(np.float32) * 0.2
    w2 = rng.normal(size=(64, 10)).astype(np.float32) * 0.2
    b1 = rng.normal(size=64).astype(np.float32)

    def fn(x):
        return jax.nn.gelu(x @ w1 + b1) @ w2
    return fn, rng.normal(size=(8, 48)).astype(np.float32)


def _cnn(rng):
    k1 = rng.normal(size=(3, 3, 3, 16)).astype(np.float32) * 0.3
    k2 = rng.normal(size=(3, 3, 16, 8)).astype(np.float32) * 0.3
    w = rng.normal(size=(4 * 4 * 8, 10)).astype(np.float32) * 0.2
    dn = ("NHWC", "HWIO", "NHWC")

    def fn(x):
        y = lax.conv_general_dilated(x, k1, (1, 1), "SAME", dimension_numbers=dn)
        y = lax.reduce_window(y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        y = jax.nn.relu(y)  # after the pool: a max of its own, on int8 codes in int8 mode
        y = jax.nn.relu(lax.conv_general_dilated(y, k2, (1, 1), "SAME", dimension_numbers=dn))
        return y.reshape(y.shape[0], -1) @ w
    return fn, rng.normal(size=(8, 8, 8, 3)).astype(np.float32)


def _attention(rng):
    fn, (x,) = transformer.factory(d_model=32, heads=2, seq=6, batch=8)
    return fn, np.asarray(x)


def _poisoned(x, rng):
    """x with NaN in sample 1, +Inf in sample 4 and -Inf in sample 6 (one element each)."""
    x = x.copy()
    for row, value in ((1, np.nan), (4, np.inf), (6, -np.inf)):
        flat = x[row].reshape(-1)
        flat[rng.integers(flat.size)] = value
        x[row] = flat.reshape(x[row].shape)
    return x


@pytest.mark.parametrize("targets", PATHS)
@pytest.mark.parametrize("mode", ["dynamic", "int8"])
@pytest.mark.parametrize("make", [_mlp, _cnn, _attention], ids=["mlp", "cnn", "attention"])
def test_non_finite_rows_stay_non_finite_and_others_are_untouched(rng, make, mode, targets):
    fn, x = make(rng)
    model = jaxlite.convert(fn, x, quantize=mode, calibration=[x] if mode == "int8" else None)
    exe = model.compile(targets=targets)
    bad_x = _poisoned(x, rng)
    poisoned = ~np.isfinite(bad_x).reshape(len(x), -1).all(1)

    ours = np.asarray(exe(bad_x)).reshape(len(x), -1)
    clean = np.asarray(exe(x)).reshape(len(x), -1)
    ref = np.asarray(jax.jit(fn)(bad_x)).reshape(len(x), -1)
    ours_bad, ref_bad = ~np.isfinite(ours).all(1), ~np.isfinite(ref).all(1)
    assert not (ref_bad & ~ours_bad).any(), "a row jax gives as non-finite came out finite"
    # every poisoned row is NaN (XLA's float max-pool may drop a NaN; the int8 model keeps it)
    assert (ours_bad == poisoned).all()
    np.testing.assert_array_equal(ours[~poisoned], clean[~poisoned])
    assert np.isfinite(clean).all()


def test_the_int8_scheme_gives_and_reads_the_nan_code():
    x = np.array([1.0, np.nan, np.inf, -np.inf, 1e30, -1e30], np.float32)
    q = np.asarray(int8.quantize(x, np.float32(0.1)))
    assert q.tolist() == [10, -128, -128, -128, 127, -127]
    assert np.isnan(int8.dequantize(q, np.float32(0.1), -1)[1:4]).all()
    assert np.isnan(np.asarray(int8.safe_scale(jnp.array([np.inf, np.nan])))).all()
    assert np.asarray(int8.safe_scale(jnp.array([0.0, 127.0]))).tolist() == [1.0, 1.0]


def test_code_ops_let_the_nan_code_win():
    codes = np.array([[-128, 5], [-127, 127]], np.int8)
    const = jlax.ConstantOp.from_array(codes)
    op = quant.CodeMaxOp([const.result, const.result], [const.result.type], {})
    op.verify()
    assert np.asarray(op.evaluate(codes, np.zeros_like(codes))[0]).tolist() == [[-128, 5], [0, 127]]
    assert np.asarray(jlax.PRIMITIVE_OPS["max"].evaluate(op, codes, np.zeros_like(codes))[0]).tolist() == \
        [[0, 5], [0, 127]]  # (lax's own max on the same int8 values)


@pytest.mark.skipif(not NATIVE, reason="needs the native kernels (AVX-512 VNNI)")
def test_native_max_pool_and_activations_propagate():
    x = np.zeros((1, 4, 4, 64), np.int8)
    x[0, 1, 1, 3] = -128
    x[0, 2, 2, 3] = 127
    out = np.asarray(jax.jit(lambda v: native_calls.max_pool(v, window=[2, 2], strides=[2, 2], padding_low=[0, 0],
                                                                out_size=[2, 2]))(x))
    assert out[0, 0, 0, 3] == -128 and out[0, 1, 1, 3] == 127 and out[0, 0, 1, 3] == 0
    f = np.zeros((1, 4, 4, 20), np.float32)
    f[0, 0, 0, 1] = np.nan
    f[0, 0, 1, 1] = 5.0
    out = np.asarray(jax.jit(lambda v: native_calls.max_pool(v, window=[2, 2], strides=[2, 2], padding_low=[0, 0],
                                                                out_size=[2, 2]))(f))
    finite = np.ones(out.shape, bool)
    finite[0, 0, 0, 1] = False
    assert np.isnan(out[0, 0, 0, 1]) and np.isfinite(out[finite]).all()

    # every activation of the epilogue keeps a NaN row NaN; the finite row stays finite
    w = np.ones((16, 32), np.int8)
    packed, colsum = native_calls.pack(w)
    a = np.ones((2, 16), np.float32)
    a[0, 3] = np.nan
    for activation in native_calls.library().activations:
        y = np.asarray(native_calls.dynamic_gemm(a, packed, colsum, np.full(32, 0.01, np.float32), 32,
                                                 activation=activation))
        assert np.isnan(y[0]).all() and np.isfinite(y[1]).all(), activation


def test_int8_max_and_max_pool_run_on_codes(rng):
    fn, x = _cnn(rng)
    text = jaxlite.convert(fn, x, quantize="int8", calibration=[x]).ir()
    assert "jquant.reduce_window_max" in text and "jquant.max" in text
    assert "jlax.reduce_window_max" not in text
