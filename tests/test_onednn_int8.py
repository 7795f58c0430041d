"""The ``cpu-onednn-int8`` target (oneDNN's AMX int8 kernels): the same int8 products as the
native kernels, so ``dynamic`` results equal theirs to float rounding and ``int8`` ones to
one requantized code; NaN's code poisons the same rows and output positions; only CPUs with
AMX-INT8 use it. Runs where the target is available (a CPU with AMX)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxlite
from jaxlite.runtime import available_targets, onednn_int8_kernels
from jaxlite.runtime.registry import TARGETS

NATIVE = ["cpu-avx512vnni", "cpu-onednn"]
needs_amx = pytest.mark.skipif("cpu-onednn-int8" not in available_targets(),
                               reason="cpu-onednn-int8 unavailable: " + str(TARGETS["cpu-onednn-int8"].unavailable()))


@pytest.fixture
def every_size(monkeypatch):
    """Small test shapes take the oneDNN kernels too."""
    monkeypatch.setattr(onednn_int8_kernels, "MIN_MACS", 0)


def _both(fn, x, mode, calibration=None):
    """(outputs on cpu-onednn-int8, on the native kernels) of ``fn`` quantized in ``mode``."""
    model = jaxlite.convert(fn, x, quantize=mode, calibration=calibration)
    exe = model.compile()
    assert "cpu-onednn-int8" in exe.describe_kernels(), exe.describe_kernels()
    return np.asarray(exe(x)), np.asarray(model.compile(targets=NATIVE)(x))


def test_the_target_is_first_where_available_and_says_why_not_elsewhere():
    names = [t.name for t, _ in jaxlite.runtime.target_status()]
    assert names.index("cpu-onednn-int8") < names.index("cpu-avx512vnni")
    why = TARGETS["cpu-onednn-int8"].unavailable()
    assert (why is None) == ("cpu-onednn-int8" in available_targets())
    if why is not None:
        assert "AMX" in why or "oneDNN" in why


@needs_amx
@pytest.mark.parametrize("case", [
    # (input NHWC, kernel HWIO, strides, padding, lhs dilation, groups)
    ((2, 9, 9, 32), (3, 3, 32, 32), (1, 1), "SAME", (1, 1), 1),
    ((1, 10, 10, 64), (3, 3, 32, 64), (2, 2), ((1, 0), (2, 1)), (1, 1), 2),
    ((1, 8, 8, 32), (1, 1, 32, 64), (2, 2), "VALID", (1, 1), 1),
    ((1, 5, 5, 32), (3, 3, 32, 32), (1, 1), ((2, 2), (2, 2)), (2, 2), 1),
    ((2, 1, 12, 32), (1, 3, 32, 32), (1, 1), ((0, 0), (1, 1)), (1, 1), 1),
])
@pytest.mark.parametrize("mode", ["dynamic", "int8"])
def test_convolutions_match_the_native_kernels(every_size, rng, case, mode):
    x_shape, w_shape, strides, padding, lhs_dilation, groups = case
    w = (rng.standard_normal(w_shape) * 0.2).astype(np.float32)
    b = rng.standard_normal(w_shape[-1]).astype(np.float32)

    def fn(x):
        y = lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dilation,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
        return jax.nn.relu(y + b)

    x = rng.standard_normal(x_shape).astype(np.float32)
    calibration = [(rng.standard_normal(x_shape).astype(np.float32),) for _ in range(4)] + [(x,)]
    ours, native = _both(fn, x, mode, calibration if mode == "int8" else None)
    # the same int8 products; the float epilogue rounds in another order
    np.testing.assert_allclose(ours, native, rtol=1e-5, atol=1e-5 * np.abs(native).max())


@needs_amx
@pytest.mark.parametrize("activation", [None, jax.nn.relu, lambda y: jax.nn.gelu(y, approximate=True)])
def test_dynamic_dense_layers_equal_the_native_kernels(every_size, rng, activation):
    w = (rng.standard_normal((96, 40)) * 0.1).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    x = np.concatenate([rng.standard_normal((20, 96)), np.abs(rng.standard_normal((17, 96)))]).astype(np.float32)

    def fn(x):
        y = x @ w + b
        return y if activation is None else activation(y)

    ours, native = _both(fn, x, "dynamic")
    np.testing.assert_array_equal(ours, native)  # same epilogue code, same float operations


@needs_amx
def test_rows_several_dense_layers_read_are_quantized_once(every_size, rng):
    """Attention's q, k and v read one LayerNorm output: one quantize_rows (XLA CSE)."""
    ws = [(rng.standard_normal((64, 64)) * 0.1).astype(np.float32) for _ in range(3)]
    x = rng.standard_normal((32, 64)).astype(np.float32)
    model = jaxlite.convert(lambda x: [x @ w for w in ws], x, quantize="dynamic")
    exe = model.compile()
    assert exe.describe_kernels().startswith("cpu-onednn-int8 3")
    assert exe.lower().compile().as_text().count('custom_call_target="jaxlite_quantize_rows"') == 1
    for ours, native in zip(exe(x), model.compile(targets=NATIVE)(x), strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(native))


@needs_amx
def test_an_int8_chain_requantizes_within_one_code_of_the_native_kernels(every_size, rng):
    w1 = (rng.standard_normal((64, 48)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((48, 32)) * 0.2).astype(np.float32)

    def fn(x):
        return jax.nn.relu(x @ w1) @ w2

    x = rng.standard_normal((24, 64)).astype(np.float32)
    calibration = [(rng.standard_normal((24, 64)).astype(np.float32),) for _ in range(4)]
    ours, native = _both(fn, x, "int8", calibration)
    # round(y / s) (oneDNN) against round(y * (1 / s)) (native) may differ by one hidden code
    # at a tie: a few outputs move by a weight times the hidden scale
    assert np.abs(ours - native).max() <= 0.02 * np.abs(native).max()
    assert np.mean(ours != native) < 0.05
    np.testing.assert_allclose(ours, np.asarray(jax.jit(fn)(x)), atol=0.1 * np.abs(native).max())


@needs_amx
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_nan_poisons_what_reads_it_as_on_the_native_kernels(every_size, rng, kind):
    if kind == "dense":
        w = (rng.standard_normal((64, 48)) * 0.2).astype(np.float32)
        x = rng.standard_normal((16, 64)).astype(np.float32)
        x[3, 5] = np.nan
        x[9, 0] = np.inf

        def fn(x):
            return jax.nn.relu(x @ w) @ w.T
    else:
        w = (rng.standard_normal((3, 3, 32, 32)) * 0.2).astype(np.float32)
        x = rng.standard_normal((2, 7, 7, 32)).astype(np.float32)
        x[1, 2, 5, 1] = np.nan

        def fn(x):
            conv = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.sum(jax.nn.relu(conv), axis=-1)
    clean = rng.standard_normal(x.shape).astype(np.float32)
    for mode in ("dynamic", "int8"):
        ours, native = _both(fn, x, mode, [(clean,)] if mode == "int8" else None)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(native))
        assert np.isnan(ours).any() and not np.isnan(ours).all()


@needs_amx
@pytest.mark.parametrize("layout", ["attention", "transposed"])
def test_products_of_two_activations_equal_the_native_kernels(every_size, rng, layout):
    """Attention's scores and weighted sum (q and k read in place, the probabilities as the
    rhs), and a dot whose operands need transposes; a NaN poisons its row / column."""
    q = rng.standard_normal((2, 32, 4, 16)).astype(np.float32)
    k = rng.standard_normal((2, 32, 4, 16)).astype(np.float32)
    q[1, 3, 2, 5] = np.nan
    if layout == "attention":
        def fn(q, k):
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)
            return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), k)
    else:
        def fn(q, k):
            return jnp.einsum("bqhd,bkhd->bdqk", q, k)
    model = jaxlite.convert(fn, q, k, quantize="dynamic")
    exe = model.compile()
    assert "cpu-onednn-int8" in exe.describe_kernels()
    ours, native = np.asarray(exe(q, k)), np.asarray(model.compile(targets=NATIVE)(q, k))
    np.testing.assert_array_equal(ours, native)
    assert np.isnan(ours).any() and not np.isnan(ours).all()


@needs_amx
def test_an_int8_convolution_chain_requantizes_like_the_native_kernels(every_size, rng):
    """Two convolutions in int8: the first requantizes in oneDNN (codes clamped to +-127),
    the second reads its codes; NaN in one sample poisons what its windows reach."""
    w1 = (rng.standard_normal((3, 3, 32, 32)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((3, 3, 32, 32)) * 0.1).astype(np.float32)

    def fn(x):
        conv = lambda v, w: lax.conv_general_dilated(v, w, (1, 1), "SAME",  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return conv(jax.nn.relu(conv(x, w1)), w2)

    calibration = [(rng.standard_normal((2, 8, 8, 32)).astype(np.float32),) for _ in range(4)]
    x = rng.standard_normal((2, 8, 8, 32)).astype(np.float32)
    x[1, 0, 0, 3] = np.nan
    model = jaxlite.convert(fn, x, quantize="int8", calibration=calibration)
    exe = model.compile()
    assert exe.describe_kernels().startswith("cpu-onednn-int8 2")
    ours, native = np.asarray(exe(x)), np.asarray(model.compile(targets=NATIVE)(x))
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(native))
    assert np.isnan(ours[1]).any() and not np.isnan(ours[0]).any() and not np.isnan(ours[1]).all()
    finite = ~np.isnan(native)
    assert np.abs(ours - native)[finite].max() <= 0.02 * np.abs(native[finite]).max()


@needs_amx
def test_the_kernels_refuse_operands_that_do_not_fit():
    from jaxlite.runtime import onednn_calls as onednn
    a = np.zeros((2, 8, 16), np.float32)
    with pytest.raises(Exception, match="strides"):  # rows 16 apart cannot hold K = 32
        jax.block_until_ready(onednn.int8_act_matmul(a, a, sizes=(2, 8, 8, 32), strides=(128, 16, 128, 16)))
    with pytest.raises(Exception, match="operand sizes"):
        jax.block_until_ready(onednn.int8_matmul(np.zeros((4, 8), np.int8), np.zeros(64, np.int8), 5,
                                                 np.ones(3, np.float32)))
