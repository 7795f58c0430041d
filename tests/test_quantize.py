"""Quantization: the seed's numerics, every mode on the digits models, file sizes, kernels."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxlite
from conftest import assert_tree_close
from jaxlite.dialects.int8 import quantize_weight
from jaxlite.dialects.module import parse_module, print_module
from jaxlite.examples import digits, digits_cnn, digits_mlp, transformer
from jaxlite.runtime import xla_int8
from jaxlite.runtime.xla_int8 import int8_conv


def test_seed_worked_example_symmetric_int8():
    w = np.array([-1.5, 0.0, 0.8], np.float32)
    q, scale = quantize_weight(w, None)
    assert q.tolist() == [-127, 0, 68]
    assert scale == pytest.approx(1.5 / 127)
    # codes 69..127 are never used by this tensor: symmetric max-abs wastes the positive side
    dense = np.linspace(-1.5, 0.8, 10001, dtype=np.float32)
    codes = set(quantize_weight(dense, None)[0].tolist())
    assert max(codes) == 68 and min(codes) == -127 and not codes & set(range(69, 128))


def test_per_channel_scales_run_along_the_output_channel():
    w = np.array([[1.0, -0.1], [-2.0, 0.05]], np.float32)  # (in, out)
    q, scale = quantize_weight(w, 1)
    np.testing.assert_allclose(scale, [2.0 / 127, 0.1 / 127])
    assert q[:, 0].tolist() == [64, -127] and q[:, 1].tolist() == [-127, 64]


def _eval(exe, x, batch=64):
    n = len(x) // batch * batch
    return np.concatenate([np.asarray(exe(x[i:i + batch])) for i in range(0, n, batch)]), n


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def digits_case(request):
    images = request.param == "cnn"
    example = digits_cnn if images else digits_mlp
    fn, args = example.factory()
    x_train, _, x_test, y_test = digits.load(images=images)
    ref, n = _eval(jax.jit(fn), x_test)
    return fn, args, x_train, x_test, y_test[:n], digits.accuracy(ref, y_test[:n])


@pytest.mark.parametrize("mode, max_drop", [("float16", 0.001), ("int8-weights", 0.005),
                                            ("dynamic", 0.005), ("int8", 0.01)])
def test_accuracy_on_held_out_digits(digits_case, mode, max_drop):
    fn, args, x_train, x_test, y_test, float_acc = digits_case
    calibration = [(x_train[i:i + 64],) for i in range(0, 640, 64)] if mode == "int8" else None
    model = jaxlite.convert(fn, *args, quantize=mode, calibration=calibration)
    out, _ = _eval(model.compile(), x_test)
    assert digits.accuracy(out, y_test) >= float_acc - max_drop - 1e-9
    assert model.metadata["quantization"]["mode"] == mode


def test_quantized_model_saved_and_loaded_computes_exactly_the_same(tmp_path, digits_case):
    fn, args, x_train, *_ = digits_case
    for mode in ("float16", "int8-weights", "dynamic", "int8"):
        cal = [(x_train[:64],), (x_train[64:128],)] if mode == "int8" else None
        model = jaxlite.convert(fn, *args, quantize=mode, calibration=cal)
        model.save(tmp_path / f"{mode}.jlite")
        loaded = jaxlite.load(tmp_path / f"{mode}.jlite")
        assert loaded.metadata["quantization"]["mode"] == mode
        assert_tree_close(loaded.compile()(*args), model.compile()(*args), rtol=0, atol=0)


def test_full_integer_graph_keeps_int8_between_layers():
    fn, args = digits_cnn.factory()
    x_train = digits.load(images=True)[0]
    model = jaxlite.convert(fn, *args, quantize="int8", calibration=[(x_train[:64],)])
    kinds = [op.name for op in model.module.walk()]
    # no quantize/dequantize left: the first conv quantizes the float input as it reads it,
    # the last dot's epilogue writes float
    assert kinds.count("jquant.quantize") == 0 and kinds.count("jquant.dequantize") == 0
    assert kinds.count("jquant.qconv") == 2 and kinds.count("jquant.qdot") == 1
    text = model.ir()
    assert "-> tensor<64x10xf32>\n    func.return" in text
    assert "jquant.qconv %0," in text and "tensor<64x8x8x1xf32>, tensor<3x3x1x16xi8>" in text
    assert "jquant.reduce_window_max" in text and "tensor<64x4x4x16xi8>" in text  # int8 max-pool
    assert "jfuse." not in text and "xf32> -> tensor<64x512xi8>" not in text  # no jfuse op left
    assert "(tensor<64x4x4x32xi8>) -> tensor<64x512xi8>" in text                # int8 reshape


def test_int8_result_read_as_float_comes_from_the_epilogue():
    """dequantize(qdot) folds into a float-result qdot only where the int8 value has no
    other reader: here y also feeds the next int8 dot, so its dequantize (for the residual
    add) stays, while z is only ever read as float."""
    rng = np.random.default_rng(1)
    w1, w2 = (jnp.asarray(rng.standard_normal((32, 32)).astype(np.float32) * 0.2) for _ in range(2))

    def fn(x):
        y = jax.nn.relu(x @ w1)
        z = y @ w2
        return z + y

    x = rng.standard_normal((16, 32)).astype(np.float32)
    model = jaxlite.convert(fn, x, quantize="int8", calibration=[(x,)])
    qdots = [op for op in model.module.walk() if op.name == "jquant.qdot"]
    dequantized = [op for op in model.module.walk() if op.name == "jquant.dequantize"]
    assert [str(q.result.type) for q in qdots] == ["tensor<16x32xi8>", "tensor<16x32xf32>"]
    assert len(dequantized) == 1 and dequantized[0].input is qdots[0].result
    expected = np.asarray(jax.jit(fn)(x))
    for exe in (model.compile(), model.compile(native_gemm=False)):
        assert np.linalg.norm(np.asarray(exe(x)) - expected) <= 0.03 * np.linalg.norm(expected)


def test_int8_chain_ending_in_float_after_reshapes_is_float_from_the_epilogue():
    """Attention's Q and K: qdot -> reshape -> transpose -> a dot between activations (float).
    The dequantize that sank to the end of the reshapes moves back to the qdot, whose epilogue
    then writes float; the int8 chain into the next qdot (through a reshape) stays int8."""
    rng = np.random.default_rng(2)
    wq, wk, w2 = (jnp.asarray(rng.standard_normal((32, 32)).astype(np.float32) * 0.2) for _ in range(3))
    w3 = jnp.asarray(rng.standard_normal((16, 32)).astype(np.float32) * 0.2)

    def fn(x):
        q = (x @ wq).reshape(16, 4, 8).transpose(1, 0, 2)
        k = (x @ wk).reshape(16, 4, 8).transpose(1, 0, 2)
        scores = jnp.einsum("hqd,hkd->hqk", q, k)
        return scores.sum(), jax.nn.relu(x @ w2).reshape(32, 16) @ w3

    x = rng.standard_normal((16, 32)).astype(np.float32)
    model = jaxlite.convert(fn, x, quantize="int8", calibration=[(x,)])
    kinds = [op.name for op in model.module.walk()]
    qdots = [op for op in model.module.walk() if op.name == "jquant.qdot"]
    assert kinds.count("jquant.dequantize") == 0 and kinds.count("jquant.dynamic_act_dot") == 1
    assert sorted(str(q.result.type) for q in qdots) == ["tensor<16x32xf32>"] * 2 + ["tensor<16x32xi8>", "tensor<32x32xf32>"]
    assert "tensor<32x16xi8>" in model.ir()  # relu's output reshaped as int8 on its way to a qdot
    expected = jax.jit(fn)(x)
    for exe in (model.compile(), model.compile(native_gemm=False)):
        for got, want in zip(exe(x), expected, strict=True):
            want = np.asarray(want)
            assert np.linalg.norm(np.asarray(got) - want) <= 0.05 * np.linalg.norm(want)


def test_dynamic_and_int8_weights_ir():
    fn, args = digits_mlp.factory()
    dyn = jaxlite.convert(fn, *args, quantize="dynamic")
    assert dyn.ir().count("jquant.dynamic_dot") == 3
    assert all(a.dtype == np.int8 for n, a in dyn.weights.arrays.items() if n.endswith(".q"))
    wo = jaxlite.convert(fn, *args, quantize="int8-weights")
    assert wo.ir().count("jquant.dequantize") == 3 and wo.ir().count("jfuse.dot") == 3
    exe = wo.compile()  # expanded to float once at load: only float32 arrays reach the device
    placed = list(exe._weights.values())
    assert all(a.dtype == jnp.float32 for a in placed)


def test_skip_and_per_tensor_options():
    fn, args = digits_mlp.factory()
    model = jaxlite.convert(fn, *args, quantize="dynamic", skip=["params.Dense_2*"])
    assert model.ir().count("jquant.dynamic_dot") == 2 and model.ir().count("jfuse.dot") == 1
    model = jaxlite.convert(fn, *args, quantize="dynamic", per_channel=False)
    scales = [a for n, a in model.weights.arrays.items() if n.endswith(".scale")]
    assert scales and all(a.shape == () for a in scales)


def test_file_sizes_against_float32(tmp_path):
    fn, args = transformer.factory(num_layers=2, d_model=256, heads=4, seq=16)
    sizes = {}
    for mode in (None, "float16", "int8-weights", "dynamic", "int8"):
        cal = [args] if mode == "int8" else None
        model = jaxlite.convert(fn, *args, quantize=mode, calibration=cal)
        if mode is None:
            assert model.num_parameters >= 1_000_000
        path = tmp_path / f"{mode}.jlite"
        model.save(path)
        sizes[mode] = path.stat().st_size
    for mode in ("int8-weights", "dynamic", "int8"):
        assert sizes[mode] <= 0.26 * sizes[None], (mode, sizes)
    assert sizes["float16"] <= 0.51 * sizes[None]


def test_transformer_modes_stay_close_to_float():
    fn, args = transformer.factory()
    ref = np.asarray(jax.jit(fn)(*args))
    for mode, tol in (("float16", 2e-3), ("int8-weights", 0.05), ("dynamic", 0.05), ("int8", 0.1)):
        model = jaxlite.convert(fn, *args, quantize=mode, calibration=[args] if mode == "int8" else None)
        out = np.asarray(model.compile()(*args))
        rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        assert rel < tol, (mode, rel)
        text = model.ir()
        assert print_module(parse_module(text)) == text


def test_quantize_errors():
    fn, args = digits_mlp.factory()
    with pytest.raises(jaxlite.ConversionError, match="unknown quantize mode 'int4'"):
        jaxlite.convert(fn, *args, quantize="int4")
    with pytest.raises(jaxlite.ConversionError, match="needs calibration data"):
        jaxlite.convert(fn, *args, quantize="int8")
    with pytest.raises(jaxlite.ConversionError, match="only used with quantize='int8'"):
        jaxlite.convert(fn, *args, quantize="dynamic", calibration=[args])
    with pytest.raises(jaxlite.ConversionError, match=r"calibration batch 0: input x is float32\[3, 64\], the model takes"):
        jaxlite.convert(fn, *args, quantize="int8", calibration=[(np.ones((3, 64), np.float32),)])
    with pytest.raises(jaxlite.ConversionError, match="empty"):
        jaxlite.convert(fn, *args, quantize="int8", calibration=[])


@pytest.mark.parametrize("case", [
    ((2, 9, 9, 6), (3, 3, 6, 8), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, ("NHWC", "HWIO", "NHWC")),
    ((2, 9, 9, 6), (3, 3, 1, 12), (2, 2), ((1, 2), (0, 1)), (2, 1), 6, ("NHWC", "HWIO", "NHWC")),
    ((2, 6, 9, 9), (8, 3, 3, 3), (2, 1), ((0, 0), (1, 1)), (1, 1), 2, ("NCHW", "OIHW", "NCHW")),
    ((2, 10, 6), (3, 6, 4), (1,), ((1, 1),), (1,), 1, ("NWC", "WIO", "NWC")),
    # input dilation (transposed convolutions: flax ConvTranspose), negative padding too
    ((2, 5, 5, 3), (3, 3, 3, 4), (1, 1), ((2, 2), (1, 2)), (1, 1), 1, ("NHWC", "HWIO", "NHWC"), (2, 2)),
    ((1, 4, 7, 6), (4, 2, 3, 2), (1, 2), ((1, -1), (0, 1)), (1, 1), 2, ("NCHW", "OIHW", "NCHW"), (3, 2)),
])
def test_im2col_int8_conv_is_bit_exact(case):
    xs, ws, strides, pad, rhs_dil, groups, names, *lhs_dil = case
    lhs_dil = lhs_dil[0] if lhs_dil else (1,) * len(strides)
    rng = np.random.default_rng(0)
    x = rng.integers(-127, 128, xs).astype(np.int8)
    w = rng.integers(-127, 128, ws).astype(np.int8)
    dn = lax.conv_dimension_numbers(xs, ws, names)
    ref = lax.conv_general_dilated(x, w, strides, pad, lhs_dil, rhs_dil, dn, groups,
                                   preferred_element_type=jnp.int32)
    out = int8_conv(x, w, window_strides=strides, padding=pad, lhs_dilation=lhs_dil,
                    rhs_dilation=rhs_dil, dimension_numbers=dn, feature_group_count=groups, batch_group_count=1)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


@pytest.mark.parametrize("xs, ws, dims", [
    ((64, 9), (9, 16), (((1,), (0,)), ((), ()))),               # the digits CNN's first conv, K = 9
    ((5, 3, 3), (3, 3, 7), (((1, 2), (0, 1)), ((), ()))),       # two contracting dims, K = 9
    ((2, 5, 10), (2, 6, 10), (((2,), (2,)), ((0,), (0,)))),     # batched, K = 10
    ((4, 12), (12, 3), (((1,), (0,)), ((), ()))),               # K already a multiple of 4
])
def test_cuda_k_padding_keeps_int8_dots_exact(xs, ws, dims):
    """The CUDA branch of int8_dot (zero-padded K, a workaround for XLA's Triton GEMM) runs
    here on the CPU: it must compute the same sums as the plain dot."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(-127, 128, xs).astype(np.int8))
    w = jnp.asarray(rng.integers(-127, 128, ws).astype(np.int8))
    ref = lax.dot_general(x.astype(jnp.int32), w.astype(jnp.int32), dims)

    def plain(a, b):
        return lax.dot_general(a, b, dims, preferred_element_type=jnp.int32)
    np.testing.assert_array_equal(np.asarray(xla_int8._k_padded_dot(plain, dims, x, w)), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(xla_int8.int8_dot(x, w, dims)), np.asarray(ref))


def _asymmetric_rows(x, axes=(1,)):
    """numpy's own take on the dynamic rows' scheme (dialects/int8.py): per row (over
    ``axes``), the range [min(x, 0), max(x, 0)] over 256 codes with a zero point; (codes -
    zero, scale)."""
    lo = np.minimum(x.min(tuple(axes), keepdims=True), 0).astype(np.float32)
    hi = np.maximum(x.max(tuple(axes), keepdims=True), 0).astype(np.float32)
    s = (hi * np.float32(0.5) - lo * np.float32(0.5)) * (np.float32(2) / np.float32(255))
    s[s == 0] = 1
    inv = np.float32(1) / s
    zero = np.clip(np.round(-lo * inv), 0, 255) - 128
    q = np.clip(np.round(x * inv) + zero, -128, 127)
    return q - zero, s


def test_dynamic_dot_matches_its_definition():
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.standard_normal((16, 8)).astype(np.float32))
    x = rng.standard_normal((5, 16)).astype(np.float32)
    x[2] = 0.0  # an all-zero row must not divide by zero
    x[3] = np.abs(x[3])  # all positive: zero point -128
    x[4] = -np.abs(x[4])  # all negative: zero point 127
    wq, ws = quantize_weight(np.asarray(w), 1)
    codes, xs = _asymmetric_rows(x)
    expected = (codes @ wq.astype(np.float64)) * xs * ws
    model = jaxlite.convert(lambda v: v @ w, x, quantize="dynamic")
    for native_gemm in (True, False):
        out = np.asarray(model.compile(native_gemm=native_gemm)(x))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
        assert np.all(out[2] == 0)


def test_dynamic_rows_spend_all_codes_on_their_range():
    """A post-ReLU row (all >= 0) is quantized over 256 levels, not max-abs / 127's 128: its
    quantization error is about half the symmetric scheme's (measured on the same rows, both
    against the product with the same int8 weight)."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((256, 64)).astype(np.float32)
    x = np.maximum(rng.standard_normal((32, 256)), 0).astype(np.float32)
    out = np.asarray(jaxlite.compile(lambda v: v @ jnp.asarray(w), x, quantize="dynamic")(x))
    wq, ws = quantize_weight(w, 1)
    exact = x.astype(np.float64) @ (wq * ws.astype(np.float64))
    sym_scale = np.abs(x).max(1, keepdims=True) / 127
    symmetric = (np.clip(np.round(x / sym_scale), -127, 127) @ wq.astype(np.float64)) * sym_scale * ws
    asym_err, sym_err = np.linalg.norm(out - exact), np.linalg.norm(symmetric - exact)
    assert asym_err < 0.6 * sym_err, (asym_err, sym_err)


def test_per_layer_report_names_layers_worst_first():
    fn, args = digits_cnn.factory()
    x_train, _, x_test, _ = digits.load(images=True)
    float_model = jaxlite.convert(fn, *args)
    for mode in ("float16", "dynamic", "int8"):
        q = jaxlite.convert(fn, *args, quantize=mode, calibration=[(x_train[:64],)] if mode == "int8" else None)
        report = jaxlite.quantization_report(float_model, q, [(x_test[:64],), (x_test[64:128],)])
        assert {e.weight for e in report.layers} == {"params.Conv_0.kernel.folded", "params.Conv_1.kernel.folded",
                                                      "params.Dense_0.kernel"}
        sqnr = [e.sqnr_db for e in report.layers]
        assert sqnr == sorted(sqnr)
        assert all(s > (55 if mode == "float16" else 25) for s in sqnr), (mode, sqnr)
        assert "worst first" in str(report) and "params.Conv_1.kernel.folded" in str(report)
        assert report.to_dict()["layers"][0]["module"].startswith("params.")
    # a deliberately damaged layer comes out worst
    broken = jaxlite.convert(fn, *args, quantize="dynamic")
    name = next(n for n in broken.weights.arrays if n.startswith("params.Conv_0") and n.endswith(".scale"))
    broken.weights.arrays[name] = broken.weights.arrays[name] * 1.5
    report = jaxlite.quantization_report(float_model, broken, [(x_test[:64],)])
    assert report.layers[0].weight == "params.Conv_0.kernel.folded" and report.layers[0].sqnr_db < 10


def test_report_needs_matching_models():
    fn, args = digits_mlp.factory()
    f = jaxlite.convert(fn, *args)
    with pytest.raises(jaxlite.ConversionError, match="no quantized layer"):
        jaxlite.quantization_report(f, f, [args])


def test_float16_compute_path_used_on_gpu_is_close_and_runs_in_float16():
    fn, args = transformer.factory()
    model = jaxlite.convert(fn, *args, quantize="float16")
    exe = model.compile(float16_compute=True)   # what device="gpu" does by default
    ref = np.asarray(jax.jit(fn)(*args))
    out = np.asarray(exe(*args))
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 5e-3
    dots = [line for line in exe.lower().as_text().splitlines() if "stablehlo.dot_general" in line]
    half_dots = [d for d in dots if re.search(r"xf16>, tensor<[0-9x]+xf16>\) -> tensor<[0-9x]+xf32>", d)]
    assert len(half_dots) == 6  # the six projections, which read weights; attention stays float32
    assert len(dots) == 8
    assert all(a.dtype == jnp.float16 for n, a in exe._weights.items() if n.endswith(".f16"))
    cpu = model.compile()                       # CPU default: upcast at load, float32 math
    assert not cpu.float16_compute and "xf16>" not in cpu.lower().as_text()


def _native_or_skip():
    from jaxlite.runtime import native_calls

    if not native_calls.available():
        pytest.skip(f"jaxlite's native CPU kernels do not run here ({native_calls.unavailable()})")
    return native_calls


def test_native_kernels_are_available_wherever_they_can_run():
    """The kernels are built when the package is installed: on a Linux x86-64 CPU with the
    ISA of one of their builds (AVX2 at least), they must load (else every native test would
    silently skip)."""
    import platform

    from jaxlite.runtime import cpu, native_calls

    if platform.system() != "Linux" or platform.machine() != "x86_64" or not any(isa <= cpu.features() for _, isa in native_calls.VARIANTS.values()) \
            or os.environ.get("JAXLITE_NATIVE") == "0" or os.environ.get("JAXLITE_BUILD_NATIVE") == "0":
        pytest.skip("not a CPU the native kernels are built for")
    assert native_calls.unavailable() is None


# shapes that hit every register tile: 6-row tiles over panel pairs, 12-row tiles over a
# last odd panel (AVX-512; AVX2: 4-row tiles over half panels), every row tail, K not a multiple of 4, columns not a multiple of 16
GEMM_SHAPES = [(1, 3, 1), (1, 70, 50), (1, 256, 64), (7, 5, 33), (64, 64, 128), (13, 257, 70), (300, 96, 40), (11, 20, 97), (6, 8, 64),
               (18, 16, 20), (23, 9, 96), *[(12 + r, 12, 80) for r in range(1, 12)]]


def _int8_gemm_operands(native, rng, m, k, n):
    """Random int8 a [m, k] and w [k, n], and w packed for the native kernel."""
    a = rng.integers(-127, 128, (m, k)).astype(np.int8)
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    return (a, w, *native.pack(w))


def test_native_vnni_gemm_is_bit_exact_with_xla():
    native = _native_or_skip()
    rng = np.random.default_rng(0)
    for m, k, n in GEMM_SHAPES:
        a, w, packed, colsum = _int8_gemm_operands(native, rng, m, k, n)
        ones = np.ones(n, np.float32)  # float(acc) is exact: |acc| < 2**24 for these K
        got = np.asarray(jax.jit(native.quantized_gemm, static_argnums=3)(a, packed, colsum, n, ones))
        np.testing.assert_array_equal(got, a.astype(np.int32) @ w.astype(np.int32))


@pytest.mark.parametrize("activation", ["none", "relu", "relu6", "sigmoid", "tanh", "silu", "gelu_tanh", "gelu_erf"])
def test_native_gemm_epilogue_matches_the_xla_formula(activation):
    """Row/column scales, bias, activation and the int8 requantize, against the same float
    operations in XLA (the formula of runtime.quant_kernels)."""
    native = _native_or_skip()
    from jaxlite.dialects import int8
    from jaxlite.dialects.fused import ACTIVATIONS

    rng = np.random.default_rng(1)
    for m, k, n in GEMM_SHAPES:
        a, w, packed, colsum = _int8_gemm_operands(native, rng, m, k, n)
        row = rng.uniform(1e-3, 1e-2, m).astype(np.float32)
        col = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
        bias = rng.normal(0, 2, n).astype(np.float32)
        out_scale = np.float32(0.05)

        def reference(a, w, row, col, bias, out_scale):
            acc = xla_int8.int8_dot(a, w, (((1,), (0,)), ((), ()))).astype(jnp.float32)
            y = ACTIVATIONS[activation](acc * row[:, None] * col + bias)
            return y, int8.quantize(y, out_scale)

        want_y, want_q = jax.jit(reference)(a, w, row, col, bias, out_scale)
        run = jax.jit(lambda *xs, **kw: native.quantized_gemm(*xs, **kw), static_argnums=3,
                      static_argnames=("activation",))
        y = run(a, packed, colsum, n, col, row_scale=row, bias=bias, activation=activation)
        q = run(a, packed, colsum, n, col, row_scale=row, bias=bias, out_scale=out_scale,
                activation=activation)
        assert y.dtype == jnp.float32 and q.dtype == jnp.int8
        # relu/relu6 exactly; exp/tanh/erf are the kernel's own polynomials (~1e-7)
        np.testing.assert_allclose(y, want_y, rtol=2e-6, atol=1e-6)
        # requantized values may differ by one step where XLA fused a multiply-add
        assert np.abs(np.asarray(q, np.int32) - np.asarray(want_q, np.int32)).max() <= 1


def test_native_dynamic_gemm_quantizes_rows_like_xla():
    native = _native_or_skip()
    from jaxlite.dialects import int8

    rng = np.random.default_rng(2)
    for m, k, n in GEMM_SHAPES:
        x = rng.normal(0, 3, (m, k)).astype(np.float32)
        x[0] = 0.0  # an all-zero row has scale 1
        wq, w_scale = int8.quantize_weight(rng.normal(0, 1, (k, n)), axis=1)
        packed, colsum = native.pack(wq)

        def reference(x, wq, w_scale):
            s, zero = int8.row_params(x, (1,))
            acc = xla_int8.int8_dot(int8.quantize_asymmetric(x, s, zero), wq, (((1,), (0,)), ((), ())))
            acc = acc - zero * jnp.sum(wq.astype(jnp.int32), axis=0)
            return acc.astype(jnp.float32) * s * w_scale

        got = jax.jit(native.dynamic_gemm, static_argnums=4)(x, packed, colsum, w_scale, n)
        np.testing.assert_allclose(got, jax.jit(reference)(x, wq, w_scale), rtol=1e-6, atol=1e-6)
        # the rows quantized by a call of their own (a shared input) give the same codes
        q, s, zero = jax.jit(native.quantize_rows)(x)
        want_s, want_zero = jax.jit(int8.row_params, static_argnums=1)(x, (1,))
        np.testing.assert_array_equal(s, want_s.reshape(-1))
        np.testing.assert_array_equal(zero, want_zero.reshape(-1))
        np.testing.assert_array_equal(q, jax.jit(int8.quantize_asymmetric)(x, want_s, want_zero))
        shared = jax.jit(native.quantized_gemm, static_argnums=3)(q, packed, colsum, n, w_scale, row_scale=s,
                                                                   row_zero=zero)
        np.testing.assert_allclose(shared, got, rtol=1e-6, atol=1e-6)


def test_packed_weight_is_in_the_layout_the_serving_build_reads():
    """AVX-512 VNNI reads bytes, k in groups of 4; AVX2 bytes, k in pairs (widened as the
    tile loads them); both in panels of 32 zero-padded columns. A library without the query
    (builds before the AVX2 layouts) reads groups of 4."""
    native = _native_or_skip()
    layout = native.library().weight_layout
    assert layout == ("int8x4" if native.target() == "cpu-avx512vnni" else "int8x2")
    w = np.arange(-60, 60).astype(np.int8).reshape(10, 12)  # K 10 -> 12, N 12 -> 32
    assert native.packed_weight(w).size == native.packed_bytes(10, 12)
    np.testing.assert_array_equal(native.packed_weight(w), native.packed_weight(w, layout))
    for name, (dtype, group) in native.WEIGHT_LAYOUTS.items():
        packed = native.packed_weight(w, name)
        assert packed.dtype == np.int8
        values = packed.view(dtype).reshape(12 // group, 32, group)  # [k group][column][k]
        matrix = values.transpose(0, 2, 1).reshape(12, 32)
        np.testing.assert_array_equal(matrix[:10, :12], w)
        assert not matrix[10:].any() and not matrix[:, 12:].any()

    class OlderBuild:
        JaxliteQuantizedGemm = None

    assert native.weight_layout(OlderBuild()) == "int8x4"
    assert native.weight_layout(object()) is None  # no int8 GEMM (the oneDNN library)


def test_native_gemm_refuses_zero_points_that_do_not_fit():
    """Zero points come with one scale per row (quantize_rows gives both); a mismatch is the
    kernel's error, not a read past the buffer."""
    native = _native_or_skip()
    packed, colsum = native.pack(np.ones((16, 32), np.int8))
    a = np.zeros((4, 16), np.int8)
    with pytest.raises(Exception, match="row_zero needs M zero points"):
        jax.block_until_ready(native.quantized_gemm(a, packed, colsum, 32, np.ones(32, np.float32),
                                                    row_scale=np.ones(4, np.float32),
                                                    row_zero=np.zeros(3, np.int32)))


@pytest.mark.parametrize("example", [digits_cnn, digits_mlp, transformer])
def test_native_and_xla_int8_paths_agree(example):
    fn, args = example.factory()
    for mode in ("dynamic", "int8"):
        model = jaxlite.convert(fn, *args, quantize=mode, calibration=[args] if mode == "int8" else None)
        native_exe, xla_exe = model.compile(), model.compile(native_gemm=False)
        # the int8 GEMMs are exact either way, but the rescale epilogues run inside the
        # native kernels without XLA's fused multiply-adds: floats differ in the last bits,
        # and where such a float is requantized (int8 mode) it may land one step apart
        native_out, xla_out = np.asarray(native_exe(*args)), np.asarray(xla_exe(*args))
        if mode == "dynamic":
            np.testing.assert_allclose(native_out, xla_out, rtol=2e-5, atol=2e-5)
        else:
            assert np.linalg.norm(native_out - xla_out) <= 0.01 * np.linalg.norm(xla_out)
        from jaxlite.runtime import native_calls as native
        if native.available():  # packed copies replace the int8 weights
            assert not any(n.endswith(".q") for n in native_exe._weights)
        if native.available() and example is transformer and mode == "dynamic":
            # q, k and v read one LayerNorm output: its rows are quantized once (XLA CSE)
            hlo = model.compile(targets=[native.target()]).lower().compile().as_text()
            assert hlo.count('custom_call_target="jaxlite_quantize_rows"') == 1


@pytest.mark.parametrize("dims, padding, lhs_dilation", [
    (2, ((1, 1), (1, 1)), (1, 1)),      # SAME: the border is the zero point, not code 0
    (2, ((-1, 2), (0, 1)), (1, 1)),     # a negative low pad: the XLA kernel on every CPU
    (2, ((2, 2), (1, 2)), (2, 2)),      # input dilation (a transposed convolution's holes)
    (3, ((1, 1), (0, 0), (1, 0)), (1, 1, 1)),
])
def test_dynamic_convolutions_keep_padding_at_zero(dims, padding, lhs_dilation):
    """Post-ReLU inputs (all >= 0: zero point -128, so code 0 would read as a positive value)
    through padded and dilated convolutions: within quantization noise of jax.jit, and the
    native and XLA kernels agree."""
    rng = np.random.default_rng(11)
    x = np.abs(rng.standard_normal((2, *[7] * dims, 8))).astype(np.float32)
    w = jnp.asarray(rng.standard_normal((*[3] * dims, 8, 16)).astype(np.float32))
    spatial = "DHW"[3 - dims:]
    dn = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")

    def fn(v):
        return lax.conv_general_dilated(v, w, (1,) * dims, padding, lhs_dilation, None, dn)
    ref = np.asarray(jax.jit(fn)(x))
    model = jaxlite.convert(fn, x, quantize="dynamic")
    assert "jquant.dynamic_conv" in model.ir()
    native_out, xla_out = np.asarray(model.compile()(x)), np.asarray(model.compile(native_gemm=False)(x))
    assert np.linalg.norm(xla_out - ref) <= 0.01 * np.linalg.norm(ref)
    np.testing.assert_allclose(native_out, xla_out, rtol=1e-5, atol=1e-5)


def test_transposed_convolutions_quantize_and_run_on_the_native_kernel():
    """flax ConvTranspose (an input-dilated conv) left whole (the default pipeline splits it
    into phases; passes/split_transposed_conv.py): its weight is packed for the native
    kernel, which reads the interior-padded input -- XLA's own int8 convolution made such a
    decoder 7.5x slower than jax.jit's float32."""
    import flax.linen as nn

    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, z):
            x = nn.relu(nn.ConvTranspose(16, (4, 4), strides=(2, 2))(z))
            x = nn.relu(nn.ConvTranspose(8, (3, 3), strides=(2, 2), padding="VALID")(x))
            return nn.ConvTranspose(3, (3,), strides=(3,))(x.reshape(x.shape[0], -1, 8))

    z = np.random.default_rng(0).standard_normal((2, 5, 5, 12)).astype(np.float32)
    module = Decoder()
    variables = module.init(jax.random.PRNGKey(0), z)

    def fn(z):
        return module.apply(variables, z)
    ref = np.asarray(jax.jit(fn)(z))
    for mode in ("dynamic", "int8"):
        model = jaxlite.convert(fn, z, quantize=mode, calibration=[(z,)] if mode == "int8" else None,
                                passes="canonicalize,cse,dce,fold-affine,fuse,canonicalize,cse,dce")
        assert sum("jquant." in line and "conv" in line for line in model.ir().splitlines()) == 3
        native_exe, xla_exe = model.compile(), model.compile(native_gemm=False)
        native_out, xla_out = np.asarray(native_exe(z)), np.asarray(xla_exe(z))
        assert np.linalg.norm(xla_out - ref) <= 0.05 * np.linalg.norm(ref)
        assert np.linalg.norm(native_out - xla_out) <= 0.01 * np.linalg.norm(xla_out)
        from jaxlite.runtime import native_calls as native
        if native.available():
            hlo = native_exe.lower().compile().as_text()
            assert "convolution(" not in hlo and hlo.count("jaxlite_") >= 3


def test_rnn_kernels_quantize_inside_the_scan(tmp_path):
    """An LSTM's kernels reach its scan as operands; captured (passes/capture_constants.py)
    they are quantized like any dense layer's: int8 in the file, run by the native kernels
    inside the loop. Before, they stayed float32 and were quantized again on every step."""
    import flax.linen as nn

    class Lstm(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.RNN(nn.OptimizedLSTMCell(64))(x)[:, -1])

    x = np.random.default_rng(4).standard_normal((4, 6, 32)).astype(np.float32)
    module = Lstm()
    variables = module.init(jax.random.PRNGKey(0), x)

    def fn(x):
        return module.apply(variables, x)
    ref = np.asarray(jax.jit(fn)(x))
    float_model = jaxlite.convert(fn, x)
    for mode in ("dynamic", "int8"):
        model = jaxlite.convert(fn, x, quantize=mode, calibration=[(x,)] if mode == "int8" else None)
        scan = next(op for op in model.module.walk() if op.name == "jlax.scan")
        assert sum(op.name == "jquant.dynamic_dot" for op in scan.walk()) == 2  # calibration sees no step
        model.save(tmp_path / f"{mode}.jlite")
        assert model.weights.nbytes <= 0.3 * float_model.weights.nbytes  # was 1.0: kernels stayed float
        exe = model.compile()
        out = np.asarray(exe(x))
        assert np.linalg.norm(out - ref) <= 0.03 * np.linalg.norm(ref)
        np.testing.assert_array_equal(np.asarray(jaxlite.load(tmp_path / f"{mode}.jlite").compile()(x)), out)
        from jaxlite.runtime import native_calls as native
        if native.available():
            assert exe.lower().compile().as_text().count("jaxlite_dynamic_gemm") >= 2
        report = jaxlite.quantization_report(float_model, model, [(x,)])
        assert [e.weight for e in report.layers] == ["params.Dense_0.kernel"] and report.not_listed == 2
        assert "2 quantized layers inside loop or branch bodies are not listed" in str(report)


@pytest.mark.parametrize("spec", ["btc,tk->bkc", "btc,kc->btk", "two-dims"])
def test_dots_contracting_any_input_dims_run_on_the_native_kernel(spec):
    """The native GEMM reads [rows, K]: an input contracted on other dims is transposed
    first, a weight contracted on other dims is packed transposed."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 16, 12)).astype(np.float32)
    if spec == "two-dims":   # contracting dims (2, 1) of x with (0, 1) of w, in that pairing
        w = jnp.asarray(rng.standard_normal((12, 16, 20)).astype(np.float32) * 0.1)
        def fn(x):
            return lax.dot_general(x, w, (((2, 1), (0, 1)), ((), ())))
    else:
        k = 16 if spec.startswith("btc,tk") else 12
        w = jnp.asarray(rng.standard_normal((k, 24) if spec == "btc,tk->bkc" else (24, k)).astype(np.float32) * 0.1)
        def fn(x):
            return jnp.einsum(spec, x, w)
    ref = np.asarray(jax.jit(fn)(x))
    for mode in ("dynamic", "int8"):
        model = jaxlite.convert(fn, x, quantize=mode, calibration=[(x,)] if mode == "int8" else None)
        native_exe = model.compile()
        out, xla_out = np.asarray(native_exe(x)), np.asarray(model.compile(native_gemm=False)(x))
        assert np.linalg.norm(out - ref) <= 0.03 * np.linalg.norm(ref)
        assert np.linalg.norm(out - xla_out) <= 1e-5 * np.linalg.norm(xla_out)
        from jaxlite.runtime import native_calls as native
        if native.available():
            assert "jaxlite_" in native_exe.lower().compile().as_text()


def test_scan_over_stacked_layers_quantizes_per_layer():
    """A scan over stacked layer weights (Equinox's scan-over-layers) is unrolled
    (passes/unroll_layer_scans.py): each layer gets its own int8 kernel, packed for the
    native GEMM. Before, the stack stayed float32 and its slices were re-quantized per call."""
    rng = np.random.default_rng(10)
    w = jnp.asarray(rng.standard_normal((6, 64, 64)).astype(np.float32) / 8)
    b = jnp.asarray(rng.standard_normal((6, 64)).astype(np.float32) * 0.1)

    def fn(x):
        return jax.lax.scan(lambda h, wb: (h + jax.nn.gelu(h @ wb[0] + wb[1]), None), x, (w, b))[0]
    x = rng.standard_normal((16, 64)).astype(np.float32)
    ref = np.asarray(jax.jit(fn)(x))
    float_model = jaxlite.convert(fn, x)
    for mode in ("dynamic", "int8"):
        model = jaxlite.convert(fn, x, quantize=mode, calibration=[(x,)] if mode == "int8" else None)
        assert model.weights.nbytes <= 0.3 * float_model.weights.nbytes
        exe = model.compile()
        assert np.linalg.norm(np.asarray(exe(x)) - ref) <= 0.03 * np.linalg.norm(ref)
        from jaxlite.runtime import native_calls as native
        if native.available():
            assert exe.lower().compile().as_text().count("custom_call_target=\"jaxlite_") >= 6


def test_big_packed_weights_are_arguments_not_constants():
    """A weight packed for the native kernel is embedded only while small: an embedded
    constant stays resident twice and XLA gains nothing from a custom call's constant."""
    from jaxlite.runtime import cpu_kernels
    native = _native_or_skip()
    rng = np.random.default_rng(0)
    big = jnp.asarray(rng.standard_normal((1024, 1100)).astype(np.float32) * 0.03)  # 1.1 MB packed
    small = jnp.asarray(rng.standard_normal((1100, 64)).astype(np.float32) * 0.03)
    fn = lambda x: jnp.tanh(x @ big) @ small  # noqa: E731
    x = rng.standard_normal((8, 1024)).astype(np.float32)
    for targets in ([native.target()], None):  # (None: oneDNN's int8 kernels where the CPU has AMX)
        exe = jaxlite.convert(fn, x, quantize="dynamic").compile(targets=targets)
        passed = [n for n in exe._weights if n.endswith("@vnni") or "@onednn-int8:" in n and "@colsum" not in n]
        assert len(passed) == 1 and exe._weights[passed[0]].nbytes > cpu_kernels.EMBED_PACKED_MAX_BYTES
    expected = np.asarray(jax.jit(fn)(x))
    assert np.linalg.norm(np.asarray(exe(x)) - expected) <= 0.02 * np.linalg.norm(expected)
    w = rng.integers(-127, 128, (300, 70)).astype(np.int8)
    np.testing.assert_array_equal(native.column_sums(w), w.astype(np.int64).sum(0))


CONV_GEOMETRIES = [  # (input shape, kernel shape, strides, padding, rhs dilation, dimension numbers)
    ((2, 9, 11, 5), (3, 3, 5, 7), (1, 1), "SAME", (1, 1), ("NHWC", "HWIO", "NHWC")),
    ((1, 10, 10, 3), (7, 7, 3, 16), (2, 2), ((3, 3), (3, 3)), (1, 1), ("NHWC", "HWIO", "NHWC")),
    ((2, 8, 9, 4), (3, 2, 4, 40), (2, 1), ((0, 2), (1, 0)), (2, 3), ("NHWC", "HWIO", "NHWC")),
    ((2, 6, 12, 12), (33, 6, 1, 3), (1, 2), "VALID", (1, 1), ("NCHW", "OIHW", "NCHW")),
    ((3, 17, 6), (5, 6, 9), (2,), "SAME", (2,), ("NWC", "WIO", "NWC")),
]


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_native_convolution_gathers_patches_like_im2col(geometry):
    """Padding, strides, dilation, layouts and 1-D convolutions through the kernel's own
    im2col (runtime/native), against the XLA path: dynamic (the float input quantized per
    sample in the kernel, rows of 30-72 floats), int8 with the input quantize folded in
    (fixed scale), and int8 on an int8 input."""
    _native_or_skip()
    x_shape, w_shape, strides, padding, dilation, dn = geometry
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, w_shape).astype(np.float32)
    b_shape = [1] * len(x_shape)
    b_shape[dn[2].index("C")] = w_shape[dn[1].index("O")]
    b = rng.normal(0, 1, b_shape).astype(np.float32)

    def conv(x, w):
        y = lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=dn)
        return jax.nn.relu(y + b)

    def one(x):  # int8 mode: the input quantize folds into the conv (float in, fixed scale)
        return conv(x, w)

    channels = x_shape[dn[0].index("C")]
    pointwise = np.zeros([channels if a in "IO" else 1 for a in dn[1]], np.float32)
    for c in range(channels):  # a 1x1 identity convolution in the same layouts
        pointwise[tuple(c if a in "IO" else 0 for a in dn[1])] = 1.0

    def two(x):  # int8 mode: the second conv reads the first one's int8 output
        y = lax.conv_general_dilated(x, pointwise, (1,) * (len(x_shape) - 2), "VALID", dimension_numbers=dn)
        return conv(y, w)

    x = rng.normal(0, 1, x_shape).astype(np.float32)
    for mode, fn, target in (("dynamic", one, "jaxlite_dynamic_conv"), ("int8", one, "jaxlite_dynamic_conv"),
                             ("int8", two, "jaxlite_quantized_conv")):
        model = jaxlite.convert(fn, x, quantize=mode, calibration=[(x,)] if mode == "int8" else None)
        assert_tree_close(model.compile()(x), model.compile(native_gemm=False)(x), rtol=2e-5, atol=2e-5)
        assert target in model.compile().lower().as_text()


@pytest.mark.parametrize("channels,window,strides,padding,size", [
    (16, (2, 2), (2, 2), "VALID", 9),
    (70, (3, 3), (2, 2), ((1, 1), (1, 1)), 9),    # ResNet's stem pool; 70: a vector tail
    (5, (2, 3), (1, 2), ((2, 0), (0, 3)), 9),     # windows partly and wholly in the padding
    (64, (3, 3), (2, 2), ((1, 1), (1, 1)), 64),   # big enough to be split over threads
])
def test_native_max_pool_after_quantized_convolution(channels, window, strides, padding, size):
    """Max-pool after an int8 or dynamic conv runs in the native kernel: same values as
    XLA's strided-slice pooling, including lax's lowest-value padding."""
    _native_or_skip()
    rng = np.random.default_rng(5)
    w = rng.normal(0, 1, (3, 3, 3, channels)).astype(np.float32)

    def fn(x):
        y = jax.nn.relu(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        pads = padding if isinstance(padding, str) else ((0, 0), *padding, (0, 0))
        return lax.reduce_window(y, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), pads)

    x = rng.normal(0, 1, (2, size, size + 1, 3)).astype(np.float32)
    for mode in ("dynamic", "int8"):
        model = jaxlite.convert(fn, x, quantize=mode, calibration=[(x,)] if mode == "int8" else None)
        native_exe, xla_exe = model.compile(), model.compile(native_gemm=False)
        assert "jaxlite_max_pool" in native_exe.lower().as_text()
        out = np.asarray(native_exe(x))
        np.testing.assert_allclose(out, np.asarray(xla_exe(x)), rtol=2e-5, atol=2e-5)
        ref = np.asarray(jax.jit(fn)(x))
        seen = np.isfinite(ref)  # windows wholly in the padding: -inf in float, int8's lowest in int8
        np.testing.assert_allclose(out[seen], ref[seen], rtol=0.1, atol=0.05 * np.abs(ref[seen]).max())
        if mode == "dynamic":
            np.testing.assert_array_equal(np.isneginf(out), ~seen)


ATTENTION_EINSUMS = ["bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd", "qd,kd->qk", "bij,bjk->bik", "qbhd,kbhd->bhqk"]


def _einsum_operands(spec, rng):
    sizes = dict(b=2, q=9, k=11, h=3, d=20, i=5, j=17)
    return [rng.normal(0, 1, [sizes[c] for c in part]).astype(np.float32) for part in spec.split("->")[0].split(",")]


@pytest.mark.parametrize("spec", ATTENTION_EINSUMS)
def test_dynamic_act_dot_matches_its_definition(spec):
    """Both operands quantized per row (one scale per index of batch + free dims, over the
    contracting dims, asymmetric); native and XLA kernels agree; print ->
    parse round-trips."""
    rng = np.random.default_rng(4)
    a, b = _einsum_operands(spec, rng)
    fn = lambda a, b: jnp.einsum(spec, a, b)  # noqa: E731
    model = jaxlite.convert(fn, a, b, quantize="dynamic")
    assert model.ir().count("jquant.dynamic_act_dot") == 1
    assert print_module(parse_module(model.ir())) == model.ir()
    # the definition, in numpy, on the [batch, free, contracting] layout einsum gives us
    ins, out = spec.split("->")
    la, lb = ins.split(",")
    contract = [c for c in la if c in lb and c not in out]
    qa, sa = _asymmetric_rows(a, [la.index(c) for c in contract])
    qb, sb = _asymmetric_rows(b, [lb.index(c) for c in contract])
    acc = np.einsum(spec, qa.astype(np.int64), qb.astype(np.int64)).astype(np.float32)
    want = acc * _broadcast_scale(sa, la, contract, out) * _broadcast_scale(sb, lb, contract, out)
    xla = np.asarray(model.compile(native_gemm=False)(a, b))
    np.testing.assert_allclose(xla, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model.compile()(a, b)), xla, rtol=2e-5, atol=2e-5)
    ref = np.einsum(spec, a, b)
    assert np.linalg.norm(xla - ref) / np.linalg.norm(ref) < 0.02  # int8 noise, not garbage


def test_act_dot_operands_are_read_in_place_where_strides_allow():
    """Attention's q and k ([batch, seq, heads, head_dim], contracting head_dim) are read
    by the native act-dot through (head, row) strides; what strides cannot express is
    transposed first."""
    from jaxlite.runtime.gemm_layout import strided_view

    assert strided_view((1, 128, 4, 64), [0, 2], [1], [3]) == (64, 256)
    assert strided_view((2, 4, 128, 128), [0, 1], [2], [3]) == (128 * 128, 128)
    assert strided_view((5, 17), [], [0], [1]) == (0, 17)
    assert strided_view((2, 9, 3, 20), [0, 2], [1], [3]) is None  # batch dims do not merge
    assert strided_view((1, 128, 4, 64), [0, 2], [3], [1]) is None  # K not contiguous


def _broadcast_scale(s, labels, contract, out):
    """A keepdims scale of operand ``labels`` laid out along the result's labels."""
    kept = "".join(c for c in labels if c not in contract)
    s = s.reshape([s.shape[labels.index(c)] for c in kept])
    return np.einsum(f"{kept}->{''.join(c for c in out if c in kept)}", s).reshape(
        [s.shape[kept.index(c)] if c in kept else 1 for c in out])


def test_act_dots_can_be_skipped_and_are_in_the_report():
    fn, args = transformer.factory()
    dyn = jaxlite.convert(fn, *args, quantize="dynamic")
    assert dyn.ir().count("jquant.dynamic_act_dot") == 2  # scores and weighted sum
    kept = jaxlite.convert(fn, *args, quantize="dynamic", skip=["jquant.dynamic_act_dot"])
    assert "jquant.dynamic_act_dot" not in kept.ir() and kept.ir().count("jquant.dynamic_dot") == 6
    report = jaxlite.quantization_report(jaxlite.convert(fn, *args), dyn, [args])
    act = [e for e in report.layers if e.op == "jquant.dynamic_act_dot"]
    assert [e.weight for e in sorted(act, key=lambda e: e.weight)] == ["dot_general#0", "dot_general#1"]
    assert all(20 < e.sqnr_db < 80 and e.accumulated_sqnr_db < 80 for e in act)


@pytest.mark.parametrize("shape", [(3, 7, 33), (300, 200), (5, 16)])
def test_native_row_ops_match_xla(shape):
    """jfuse.layer_norm / jfuse.softmax: the native row kernels (tails, threaded sizes,
    a row of -inf) against the XLA kernels and jax itself."""
    _native_or_skip()
    import flax.linen as nn

    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    ln = nn.LayerNorm()
    variables = jax.tree.map(lambda v: v + rng.uniform(0.1, 0.5, v.shape).astype(np.float32),
                             ln.init(jax.random.PRNGKey(0), x))
    masked = x.copy()
    masked[0] = -np.inf
    cases = [(lambda x: ln.apply(variables, x), x, "jfuse.layer_norm"),
             (lambda x: nn.LayerNorm(use_bias=False).apply({"params": {"scale": np.float32(2) * np.ones(shape[-1:],
                                                                      np.float32)}}, x), x, "jfuse.layer_norm"),
             (jax.nn.softmax, x, "jfuse.softmax"), (jax.nn.softmax, masked, "jfuse.softmax")]
    for fn, arg, op in cases:
        model = jaxlite.convert(fn, arg)
        assert op in model.ir()
        native_out, xla_out = model.compile()(arg), model.compile(native_gemm=False)(arg)
        ref = jax.jit(fn)(arg)
        assert_tree_close(native_out, xla_out, rtol=1e-5, atol=2e-6)
        assert_tree_close(native_out, ref, rtol=1e-5, atol=2e-6)
        assert np.isnan(np.asarray(ref)).any() == np.isnan(np.asarray(native_out)).any()
    hlo = jaxlite.convert(jax.nn.softmax, x).compile().lower().as_text()
    assert "jaxlite_softmax" in hlo
