"""The ``cpu-onednn`` target: float32 dense layers and convolutions on oneDNN match jax.jit
(to float32 rounding: another summation order) for every geometry, never on oneDNN's
reference kernels, and under a capped ISA."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import jaxlite
from jaxlite.runtime import available_targets

pytestmark = pytest.mark.skipif("cpu-onednn" not in available_targets(), reason="oneDNN kernels unavailable")
ACTIVATIONS = [jax.nn.relu, jax.nn.relu6, jax.nn.sigmoid, jnp.tanh, jax.nn.silu,
               lambda y: jax.nn.gelu(y, approximate=True), lambda y: jax.nn.gelu(y, approximate=False)]


def _check(fn, *args, rtol=2e-4, atol=2e-4):
    model = jaxlite.convert(fn, *args)
    exe = model.compile()
    assert "cpu-onednn" in exe.targets
    np.testing.assert_allclose(np.asarray(exe(*args)), np.asarray(jax.jit(fn)(*args)), rtol=rtol, atol=atol)
    return model


@st.composite
def convolutions(draw):
    nsp = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2, 3]))
    c = groups * draw(st.integers(1, 3))
    o = groups * draw(st.integers(1, 4))
    window = [draw(st.integers(1, 4)) for _ in range(nsp)]
    size = [draw(st.integers(1, 7)) for _ in range(nsp)]
    strides = [draw(st.integers(1, 3)) for _ in range(nsp)]
    rhs_dilation = [draw(st.integers(1, 2)) for _ in range(nsp)]
    lhs_dilation = [draw(st.integers(1, 2)) for _ in range(nsp)]
    padding = [(draw(st.integers(0, 5)), draw(st.integers(-1, 5))) for _ in range(nsp)]
    layout = draw(st.sampled_from(["channels_last", "channels_first"]))
    bias = draw(st.booleans())
    activation = draw(st.sampled_from([None, *range(len(ACTIVATIONS))]))
    return nsp, groups, c, o, window, size, strides, rhs_dilation, lhs_dilation, padding, layout, bias, activation


@settings(max_examples=int(os.environ.get("JAXLITE_FUZZ_EXAMPLES", "40")), deadline=None)
@given(convolutions())
def test_convolutions_of_any_geometry_match_jax(case):
    nsp, groups, c, o, window, size, strides, rhs_dilation, lhs_dilation, padding, layout, bias, act = case
    spatial = "HW"[2 - nsp:] if nsp == 2 else "W"
    names = ((f"N{spatial}C", f"{spatial}IO", f"N{spatial}C") if layout == "channels_last"
             else (f"NC{spatial}", f"OI{spatial}", f"NC{spatial}"))
    rng = np.random.default_rng(0)
    x_shape = (2, *size, c) if layout == "channels_last" else (2, c, *size)
    w_shape = (*window, c // groups, o) if layout == "channels_last" else (o, c // groups, *window)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    dn = lax.conv_dimension_numbers(x_shape, w_shape, names)
    out = lax.conv_general_dilated(x, w, strides, padding, lhs_dilation, rhs_dilation, dn, groups)
    if 0 in out.shape:
        return

    def fn(x):
        y = lax.conv_general_dilated(x, w, strides, padding, lhs_dilation, rhs_dilation, dn, groups)
        if bias:
            y = y + (b if layout == "channels_last" else b.reshape(o, *[1] * nsp))
        return y if act is None else ACTIVATIONS[act](y)
    _check(fn, x)


@pytest.mark.parametrize("activation", range(len(ACTIVATIONS)))
def test_dense_layers_with_every_fused_activation(rng, activation):
    w = rng.standard_normal((48, 40)).astype(np.float32) * 0.3
    b = rng.standard_normal(40).astype(np.float32)
    x = rng.standard_normal((5, 48)).astype(np.float32)
    model = _check(lambda x: ACTIVATIONS[activation](x @ w + b), x)
    assert "jfuse.dot" in model.ir()


def test_dots_that_contract_other_axes_or_give_several_output_axes(rng):
    w = rng.standard_normal((6, 3, 4)).astype(np.float32)
    x = rng.standard_normal((6, 2, 5)).astype(np.float32)
    _check(lambda x: jnp.einsum("kbs,khd->bshd", x, w), x)
    per_row = rng.standard_normal((2, 5, 1, 1)).astype(np.float32)  # a bias along rows: XLA adds it
    _check(lambda x: jax.nn.relu(jnp.einsum("kbs,khd->bshd", x, w) + per_row), x)


def test_no_primitive_is_a_reference_kernel():
    """oneDNN's reference kernels are orders of magnitude slower: the anchor models' layer
    shapes all get an optimized one (the rule leaves an op to XLA otherwise)."""
    from jaxlite.runtime import onednn_calls as onednn
    for m, k, n in ((1, 64, 256), (1, 256, 10), (128, 256, 256), (128, 256, 1024), (128, 1024, 256)):
        implementation, _ = onednn.matmul_info(m, k, n, True, "relu")
        assert not implementation.startswith("ref"), (m, k, n, implementation)
    for in_shape, geometry in (([1, 224, 224, 3], [64, 7, 7, 2, 2, 1, 1, 3, 3, 112, 112, 1]),
                               ([1, 56, 56, 64], [64, 3, 3, 1, 1, 1, 1, 1, 1, 56, 56, 1]),
                               ([1, 16, 16, 1], [32, 3, 3, 1, 1, 1, 1, 1, 1, 16, 16, 1]),
                               ([1, 28, 28, 128], [128, 3, 3, 1, 1, 1, 1, 1, 1, 28, 28, 128])):
        implementation, _ = onednn.conv_info(in_shape, geometry, True, "relu")
        assert not implementation.startswith("ref"), (in_shape, geometry, implementation)


def test_an_isa_capped_onednn_gives_the_same_results(tmp_path):
    """ONEDNN_MAX_CPU_ISA=AVX2 runs oneDNN's AVX2 kernels on a machine that has more."""
    script = ("import numpy as np, jax, jaxlite\n"
              "from jaxlite.runtime import onednn_calls as o\n"
              "r = np.random.default_rng(0); w = r.standard_normal((3, 3, 8, 16)).astype(np.float32)\n"
              "x = r.standard_normal((1, 12, 12, 8)).astype(np.float32)\n"
              "fn = lambda x: jax.nn.relu(jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', "
              "dimension_numbers=('NHWC', 'HWIO', 'NHWC')))\n"
              "y = jaxlite.convert(fn, x).compile()(x)\n"
              "np.testing.assert_allclose(np.asarray(y), np.asarray(jax.jit(fn)(x)), rtol=2e-4, atol=2e-4)\n"
              "print(o.conv_info([1, 12, 12, 8], [16, 3, 3, 1, 1, 1, 1, 1, 1, 12, 12, 1], False, 'relu')[0])\n")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "avx2" in r.stdout and "avx512" not in r.stdout, r.stdout


def _conv_net(rng):
    k1 = rng.standard_normal((3, 3, 3, 16)).astype(np.float32) * 0.3
    k2 = rng.standard_normal((3, 3, 16, 8)).astype(np.float32) * 0.2
    w = rng.standard_normal((8 * 8 * 8, 10)).astype(np.float32) * 0.1
    dn = ("NHWC", "HWIO", "NHWC")

    def fn(x):
        y = jax.nn.relu(lax.conv_general_dilated(x, k1, (1, 1), "SAME", dimension_numbers=dn))
        y = jax.nn.relu(lax.conv_general_dilated(y, k2, (1, 1), "SAME", dimension_numbers=dn))
        return y.reshape(y.shape[0], -1) @ w
    return fn, rng.standard_normal((5, 8, 8, 3)).astype(np.float32)  # 5 rows: more than FloatGemm's batch-1 case


@pytest.mark.parametrize("mode", ["float16", "bfloat16", "int8-weights"])
def test_low_precision_weights_are_packed_once_for_onednn(rng, mode):
    """float16 / bfloat16 / int8 weights: the matmuls pack them (bfloat16 as bfloat16 where
    the CPU computes in it), and no float32 copy of a weight is placed beside the packed one."""
    from jaxlite.dialects.module import find_main
    from jaxlite.runtime import cpu
    from jaxlite.runtime.lowering import Lowering
    fn, x = _conv_net(rng)
    model = jaxlite.convert(fn, x, quantize=mode)
    exe = model.compile(targets=["cpu-onednn", "xla"])  # the dense layer too (FloatGemm's on AVX2)
    ref = np.asarray(jax.jit(fn)(x))
    err = np.linalg.norm(np.asarray(exe(x)) - ref) / np.linalg.norm(ref)
    assert err < (3e-2 if mode == "int8-weights" else 1e-2), err
    lowering = Lowering(exe.targets, model.weights)
    lowering.program(find_main(model.module).body.block)
    names = list(lowering.derived)
    assert len(names) == 3 and all("@onednn" in n for n in names), names
    assert not lowering.read_weights()  # the stored weights themselves are not placed
    bf16_isa = bool({"avx512_bf16", "amx_bf16"} & cpu.features())
    assert all(n.endswith(":bfloat16") == (mode == "bfloat16" and bf16_isa) for n in names), names


def test_bfloat16_mode_halves_the_file_and_matches_jax(rng, tmp_path):
    fn, x = _conv_net(rng)
    f32, bf16 = jaxlite.convert(fn, x), jaxlite.convert(fn, x, quantize="bfloat16")
    assert "xbf16>" in bf16.ir() and "jquant.upcast" in bf16.ir()
    f32.save(tmp_path / "f32.jlite")
    bf16.save(tmp_path / "bf16.jlite")
    assert (tmp_path / "bf16.jlite").stat().st_size < 0.6 * (tmp_path / "f32.jlite").stat().st_size
    ref = np.asarray(jax.jit(fn)(x))
    for targets in (None, ["xla-float16", "xla"], ["xla"]):  # oneDNN, bfloat16 in XLA (the GPU's), float32
        y = np.asarray(jaxlite.load(tmp_path / "bf16.jlite").compile(targets=targets)(x))
        assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 1e-2, targets


@pytest.mark.parametrize("mode", [None, "float16", "int8-weights"])
def test_small_float_programs_run_direct_whatever_the_weights_precision(rng, mode):
    """A dense network on oneDNN skips XLA also when its weights are stored in lower
    precision (upcast or dequantized at load), and says which kernels served it."""
    w1, w2 = (rng.standard_normal(s).astype(np.float32) * 0.2 for s in ((32, 64), (64, 8)))
    b1 = rng.standard_normal(64).astype(np.float32)
    x = rng.standard_normal((6, 32)).astype(np.float32)  # 6 rows: more than FloatGemm's batch-1 case

    def fn(x):
        return jax.nn.relu(x @ w1 + b1) @ w2

    exe = jaxlite.convert(fn, x, quantize=mode).compile(targets=["cpu-onednn", "xla"])
    assert exe.direct
    assert exe.describe_kernels().startswith("cpu-onednn 2") and exe.describe_kernels().endswith("; direct")
    ref = np.asarray(jax.jit(fn)(x))
    out = exe(x)
    assert isinstance(out, np.ndarray)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < (3e-2 if mode == "int8-weights" else 2e-3)


@st.composite
def activation_dots(draw):
    """Two activations and dimension numbers: 0-2 batch, 0-2 free per side, 1-2 contracting
    axes, each operand's axes in a random order."""
    nb, nlf, nrf, nc = (draw(st.integers(lo, 2)) for lo in (0, 0, 0, 1))
    sizes = {name: draw(st.integers(1, 5)) for name in
             [f"b{i}" for i in range(nb)] + [f"l{i}" for i in range(nlf)] + [f"r{i}" for i in range(nrf)]
             + [f"c{i}" for i in range(nc)]}
    lhs_axes = draw(st.permutations([a for a in sizes if a[0] in "blc"]))
    rhs_axes = draw(st.permutations([a for a in sizes if a[0] in "brc"]))
    return sizes, lhs_axes, rhs_axes


@settings(max_examples=60, deadline=None)
@given(activation_dots())
def test_products_of_two_activations_of_any_layout_match_jax(case):
    """Attention-like dots between two activations run as a batched oneDNN matmul (the
    operands transposed into [B, M, K] x [B, K, N]) for every layout of the axes."""
    from jaxlite.runtime import onednn_kernels
    sizes, lhs_axes, rhs_axes = case
    rng = np.random.default_rng(len(lhs_axes) * 7 + len(rhs_axes))
    x = rng.standard_normal([sizes[a] for a in lhs_axes]).astype(np.float32)
    y = rng.standard_normal([sizes[a] for a in rhs_axes]).astype(np.float32)
    contract = tuple([lhs_axes.index(a) for a in lhs_axes if a[0] == "c"]), \
        tuple([rhs_axes.index(a) for a in lhs_axes if a[0] == "c"])
    batch = tuple([lhs_axes.index(a) for a in lhs_axes if a[0] == "b"]), \
        tuple([rhs_axes.index(a) for a in lhs_axes if a[0] == "b"])

    def fn(x, y):
        return lax.dot_general(x, y, (contract, batch))

    saved, onednn_kernels.MIN_ACTIVATION_DOT_MACS = onednn_kernels.MIN_ACTIVATION_DOT_MACS, 1
    try:
        exe = jaxlite.convert(fn, x, y).compile()
    finally:
        onednn_kernels.MIN_ACTIVATION_DOT_MACS = saved
    assert exe.targets_used.get("cpu-onednn", 0) == 1, exe.describe_kernels()
    np.testing.assert_allclose(np.asarray(exe(x, y)), np.asarray(jax.jit(fn)(x, y)), rtol=1e-5, atol=1e-5)
