"""The .tflite export, run in LiteRT's own interpreter (ai-edge-litert) and compared with
jax.jit and with jaxlite's runtime; model.ir(generic=True)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxlite
from jaxlite.compiler.tflite_writer import builtin_counts
from jaxlite.dialects.module import op_counts, parse_module, print_module

litert = pytest.importorskip("ai_edge_litert.interpreter")


def run_litert(data: bytes, *args):
    interpreter = litert.Interpreter(model_content=data, num_threads=1)
    interpreter.allocate_tensors()
    for detail, a in zip(interpreter.get_input_details(), args, strict=True):
        interpreter.set_tensor(detail["index"], np.asarray(a))
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def exported(model, tmp_path, name="m.tflite") -> bytes:
    path = tmp_path / name
    model.export(path)
    return path.read_bytes()


def rel_l2(a, b) -> float:
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


@functools.cache
def _example(name: str):
    from jaxlite.examples import digits_cnn, digits_mlp
    return {"mlp": digits_mlp, "cnn": digits_cnn}[name].factory(batch=16)


# per mode: the largest relative L2 error against jax.jit of LiteRT on the export, and how far
# it may be from jaxlite's own runtime (dynamic-range kernels round activations their own way;
# jaxlite computes bfloat16 in bfloat16 where the CPU can, the export in float32)
MODES = {None: (1e-5, 1e-5), "float16": (2e-3, 1e-5), "bfloat16": (2e-2, 2e-2), "int8-weights": (3e-2, 1e-5),
         "dynamic": (4e-2, 4e-2), "int8": (6e-2, 4e-2)}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("mode", list(MODES))
def test_examples_in_litert_match_jax_and_jaxlite(name, mode, tmp_path):
    fn, args = _example(name)
    calibration = [args, (args[0][::-1],)] if mode == "int8" else None
    model = jaxlite.convert(fn, *args, quantize=mode, calibration=calibration)
    model.save(tmp_path / "m.jlite")
    data = exported(jaxlite.load(tmp_path / "m.jlite"), tmp_path)  # a loaded model exports alike
    out = run_litert(data, *args)[0]
    ref = jax.jit(fn)(*args)
    ours = model.compile()(*args)
    to_jax, to_jaxlite = MODES[mode]
    assert out.shape == ref.shape and out.dtype == np.float32
    assert rel_l2(out, ref) <= to_jax
    assert rel_l2(out, ours) <= to_jaxlite
    assert np.mean(np.argmax(out, -1) == np.argmax(ref, -1)) >= 0.9
    ops = builtin_counts(data)
    matmuls = ops.get("FULLY_CONNECTED", 0) + ops.get("CONV_2D", 0) + ops.get("DEPTHWISE_CONV_2D", 0)
    assert matmuls == 3, ops  # one op per layer
    if name == "cnn":  # its first convolution reads one channel: depthwise, as TFLiteConverter writes it
        assert ops.get("DEPTHWISE_CONV_2D") == 1
    if mode in (None, "bfloat16"):  # float weights: one op per layer, nothing around them
        assert "DEQUANTIZE" not in ops and "QUANTIZE" not in ops


def test_sizes_follow_the_weights(tmp_path):
    fn, args = _example("cnn")
    sizes = {m: len(exported(jaxlite.convert(fn, *args, quantize=m), tmp_path)) for m in (None, "float16", "dynamic")}
    assert sizes["float16"] < 0.55 * sizes[None] and sizes["dynamic"] < 0.35 * sizes[None]


# jnp programs over one float input: each exported, run in LiteRT, compared with jax.jit
_W = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
_K = np.random.default_rng(1).standard_normal((3, 3, 4, 6)).astype(np.float32) * 0.3
_TABLE = np.random.default_rng(2).standard_normal((10, 3)).astype(np.float32)


def _conv(x, k, **kw):
    return lax.conv_general_dilated(x, k, dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)


PROGRAMS = {
    "unary": (lambda x: jnp.tanh(x) + jnp.exp(-x * x) + jnp.sqrt(jnp.abs(x) + 1) * jax.nn.sigmoid(x), (3, 6)),
    "activations": (lambda x: jax.nn.gelu(x) + jax.nn.silu(x)
                    + jax.nn.relu6(3 * x) + jax.nn.softplus(x), (3, 6)),
    "powers": (lambda x: x ** 3 + (x * x + 1) ** -1 + lax.rsqrt(x * x + 1) + jnp.log1p(jnp.abs(x)) + jnp.expm1(x), (4, 6)),
    "broadcasts": (lambda x: x * jnp.arange(6.0) + x[:, :1] - jnp.max(x, axis=0) / 3, (4, 6)),
    "where": (lambda x: jnp.where(x > 0.2, x, jnp.minimum(x, -x)) + jnp.clip(x, -0.5, 0.5), (4, 6)),
    "reductions": (lambda x: jnp.concatenate([x.sum(1), x.max(1), x.min(1), (x * x).mean(1),
                                              jnp.argmax(x, 1).astype(jnp.float32)]), (4, 6)),
    "softmax_layernorm": (lambda x: jax.nn.softmax(x, axis=-1)
                          + nn.LayerNorm().apply({"params": {"scale": jnp.arange(6.0), "bias": jnp.ones(6)}}, x),
                          (2, 3, 6)),
    "layout": (lambda x: jnp.concatenate([x.T[::2], jnp.flip(x, 0).T[1:3]], 0).reshape(-1)[3:17], (4, 6)),
    "pad_cumsum": (lambda x: jnp.cumsum(jnp.pad(x, ((1, 0), (2, 1)), constant_values=0.5), axis=1), (4, 6)),
    "erf_round_split": (lambda x: jax.scipy.special.erf(2 * x) + jax.nn.gelu(3 * x, approximate=False)
                        + jnp.round(4 * x) + lax.round(2.5 * x) + jnp.concatenate(jnp.split(x, [1, 4], axis=1)[::-1], 1)
                        + jnp.where(jnp.isfinite(1 / x), jnp.tan(x), 0.0), (4, 6)),
    "tile_update": (lambda x: jnp.tile(x, (2, 1))[3:7] + lax.dynamic_update_slice(x, jnp.ones((1, 2)), (1, 1))
                    + lax.dynamic_update_slice(x, x[:2, :3], (jnp.argmax(x[0]), 2)), (4, 6)),
    "integer_math": (lambda x: (x * 10).astype(jnp.int32) // 3 + (x * 10).astype(jnp.int32) % 3
                     + lax.rem((x * 10).astype(jnp.int32), 4), (4, 6)),
    "min_pool": (lambda x: lax.reduce_window(x, jnp.inf, lax.min, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"), (1, 6, 6, 2)),
    "top_k": (lambda x: lax.top_k(x, 3)[0] * lax.top_k(x, 3)[1], (4, 6)),
    "residual_relu": (lambda x: jax.nn.relu(x + x[::-1]) + jax.nn.relu(x * 2), (4, 6)),
    "take": (lambda i: jnp.take(_TABLE, i, axis=0) * 2, None),
    "dense_gelu_erf": (lambda x: jax.nn.gelu(x @ _W + 0.1, approximate=False), (3, 6)),  # GELU: opcode > 127
    "dense_and_matmul": (lambda x: jnp.maximum(x @ _W, 0) + (x @ x.T) @ (x @ _W) / 10, (4, 6)),
    "constant_on_the_left": (lambda x: _W.T @ x.T, (4, 6)),
    "batched_einsum": (lambda x: jnp.einsum("bqhd,bkhd->bhqk", x, x * 0.5), (2, 5, 3, 4)),
    "dense_general": (lambda x: jnp.einsum("btd,dhe->bthe", x, _W.reshape(6, 5, 1) * np.ones((1, 1, 2), np.float32)),
                      (2, 3, 6)),
    "conv_same_stride2": (lambda x: jax.nn.relu(_conv(x, _K, window_strides=(2, 2), padding="SAME") + 0.1), (1, 9, 9, 4)),
    "conv_explicit_padding_dilation": (lambda x: _conv(x, _K, window_strides=(1, 1), padding=((2, 0), (1, 3)),
                                                       rhs_dilation=(2, 1)), (2, 8, 7, 4)),
    "conv_nchw": (lambda x: lax.conv_general_dilated(x, _K.transpose(3, 2, 0, 1), (1, 1), "VALID",
                                                     dimension_numbers=("NCHW", "OIHW", "NCHW")), (1, 4, 6, 6)),
    "depthwise_multiplier_2": (lambda x: _conv(x, np.concatenate([_K[:, :, :1], _K[:, :, 1:2, :2]], -1),
                                               window_strides=(1, 1), padding="SAME", feature_group_count=4),
                               (1, 6, 6, 4)),
    "conv1d": (lambda x: lax.conv_general_dilated(x, _K[0], (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")),
               (2, 9, 4)),
    "pools": (lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
              + nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
              + nn.avg_pool(x, (2, 2), strides=(2, 2))[:, :4, :4], (1, 8, 8, 3)),
}


# the builtin a program's export must use (not a decomposition)
EXPECTED_BUILTIN = {"dense_gelu_erf": "GELU", "tile_update": "DYNAMIC_UPDATE_SLICE", "min_pool": "MAX_POOL_2D", "softmax_layernorm": "SOFTMAX", "take": "GATHER",
                    "dense_and_matmul": "FULLY_CONNECTED", "batched_einsum": "BATCH_MATMUL",
                    "dense_general": "FULLY_CONNECTED", "conv_nchw": "CONV_2D", "conv1d": "CONV_2D",
                    "depthwise_multiplier_2": "DEPTHWISE_CONV_2D", "pools": "MAX_POOL_2D", "reductions": "MEAN"}
# builtins a peephole fusion removes (ADD/MUL + ReLU: one op with the activation fused)
ABSENT_BUILTIN = {"residual_relu": ("RELU", "MAXIMUM")}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_programs_in_litert_match_jax(name, tmp_path):
    fn, shape = PROGRAMS[name]
    if shape is None:
        args = (np.array([[1, 7, 0], [9, 3, 3]], np.int32),)
    else:
        args = (np.random.default_rng(3).standard_normal(shape).astype(np.float32),)
    model = jaxlite.convert(fn, *args)
    data = exported(model, tmp_path)
    out = run_litert(data, *args)[0]
    ref = np.asarray(jax.jit(fn)(*args))
    if name in EXPECTED_BUILTIN:
        assert EXPECTED_BUILTIN[name] in builtin_counts(data)
    assert not set(ABSENT_BUILTIN.get(name, ())) & set(builtin_counts(data))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)


def test_pytree_inputs_and_outputs_keep_their_order_and_names(tmp_path):
    def fn(d):
        return {"sum": d["a"] + d["b"], "prod": d["a"] * d["b"], "same": d["a"]}
    args = ({"a": np.arange(4, dtype=np.float32), "b": np.full(4, 2, np.float32)},)
    model = jaxlite.convert(fn, *args)
    data = exported(model, tmp_path)
    interpreter = litert.Interpreter(model_content=data)
    runner = interpreter.get_signature_runner()
    outs = runner(**{s.name: leaf for s, leaf in zip(model.signature.inputs, jax.tree.leaves(args), strict=True)})
    ref = jax.jit(fn)(*args)
    for spec, leaf in zip(model.signature.outputs, jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(outs[spec.name], leaf)


def test_what_tflite_cannot_express_is_an_export_error(tmp_path):
    model = jaxlite.convert(lambda x: jnp.sort(x), np.ones(5, np.float32))
    with pytest.raises(jaxlite.ExportError, match="jlax.sort"):
        model.export(tmp_path / "m.tflite")
    loop = jaxlite.convert(lambda x: lax.while_loop(lambda c: c.sum() < 100, lambda c: c * 2, x), np.ones(3, np.float32))
    with pytest.raises(jaxlite.ExportError, match="jlax.while"):
        loop.export(tmp_path / "m.tflite")
    long_scan = jaxlite.convert(lambda x: lax.scan(lambda c, _: (c * 2, None), x, None, length=1000)[0],
                                np.ones(3, np.float32))
    with pytest.raises(jaxlite.ExportError, match="1000 steps"):
        long_scan.export(tmp_path / "m.tflite")
    symbolic = jaxlite.convert(lambda x: x * 2, np.ones((2, 3), np.float32), dynamic_batch=True)
    with pytest.raises(jaxlite.ExportError, match=r"static shapes.*dims=\{'b': 1\}"):
        symbolic.export(tmp_path / "m.tflite")
    for wrong in ({"t": 1}, {"b": 0}, {"b": 1, "t": 2}):
        with pytest.raises(jaxlite.ExportError):
            symbolic.export(tmp_path / "m.tflite", dims=wrong)
    with pytest.raises(jaxlite.ExportError, match="no symbolic dimensions"):
        jaxlite.convert(lambda x: x, np.ones(2, np.float32)).export(tmp_path / "m.tflite", dims={"b": 1})
    plain = jaxlite.convert(lambda x: x * 2, np.ones(3, np.float32))
    with pytest.raises(jaxlite.ExportError, match=r"\.tflite"):
        plain.export(tmp_path / "m.onnx")
    with pytest.raises(jaxlite.SaveError, match="no-such-dir"):
        plain.export(tmp_path / "no-such-dir" / "m.tflite")
    assert not list(tmp_path.glob("*.tflite"))


_W4 = np.random.default_rng(4).standard_normal((4, 4)).astype(np.float32) * 0.5


def _loops(x, s):
    c, ys = lax.scan(lambda c, x: (jnp.tanh(c @ _W4 + x), c * 2), jnp.zeros(4), x, reverse=True)
    y = lax.cond(s[0] > 0, lambda a: a * 2, lambda a: a - 1, c)
    z = lax.switch(jnp.clip(s[0].astype(jnp.int32), 0, 2), [lambda a: a, lambda a: a + 10, lambda a: -a], c)
    return ys.sum(0) + y + z + lax.fori_loop(0, 3, lambda i, v: v * 1.5, c)


def test_scans_unroll_and_conditionals_select(tmp_path):
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    for s in (np.array([1.0], np.float32), np.array([-1.0], np.float32), np.array([2.5], np.float32)):
        model = jaxlite.convert(_loops, x, s, passes="")  # the loops as traced, none folded away
        assert {"jlax.scan", "jlax.cond"} <= set(model.op_counts())
        out = run_litert(exported(model, tmp_path), x, s)[0]
        np.testing.assert_allclose(out, jax.jit(_loops)(x, s), rtol=1e-5, atol=1e-5)


def test_flax_models_of_other_kinds_in_every_arithmetic(tmp_path):
    """A causal LM (embedding, mask, attention, exact GELU), a GroupNorm / ConvTranspose /
    depthwise net and a GRU: LiteRT against jax.jit."""
    rng = np.random.default_rng(0)

    class LM(nn.Module):
        @nn.compact
        def __call__(self, tok):
            x = nn.Embed(50, 16)(tok)
            h = nn.LayerNorm()(x)
            x = x + nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16)(h, h, mask=nn.make_causal_mask(tok))
            return nn.Dense(50)(nn.gelu(nn.Dense(32)(nn.LayerNorm()(x)), approximate=False))

    class Conv(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.swish(nn.GroupNorm(num_groups=4)(nn.Conv(16, (3, 3))(x)))
            x = nn.Conv(8, (3, 3), feature_group_count=8)(nn.ConvTranspose(8, (3, 3), strides=(2, 2))(x))
            return jnp.mean(x, axis=(1, 2))

    cases = [(LM(), rng.integers(0, 50, (2, 6)).astype(np.int32), (None, "dynamic", "int8"), 5e-2),
             (Conv(), rng.standard_normal((2, 6, 6, 3)).astype(np.float32), (None, "float16", "int8"), 5e-2),
             (nn.RNN(nn.GRUCell(8)), rng.standard_normal((2, 4, 5)).astype(np.float32), (None,), 0)]
    for module, x, modes, quantized_tolerance in cases:
        variables = module.init(jax.random.PRNGKey(0), x)
        fn = functools.partial(module.apply, variables)
        ref = jax.jit(fn)(x)
        for mode in modes:
            model = jaxlite.convert(fn, x, quantize=mode, calibration=[(x,)] if mode == "int8" else None)
            out = run_litert(exported(model, tmp_path), x)[0]
            assert rel_l2(out, ref) <= (2e-6 if mode is None else quantized_tolerance), (type(module).__name__, mode)


def test_a_dynamic_batch_model_exports_at_the_size_given(tmp_path):
    fn, args = _example("cnn")
    model = jaxlite.convert(fn, *args, dynamic_batch=True, quantize="dynamic")
    model.export(tmp_path / "m.tflite", dims={"b": 3})
    out = run_litert((tmp_path / "m.tflite").read_bytes(), args[0][:3])[0]
    assert out.shape == (3, 10)
    assert rel_l2(out, model.compile()(args[0][:3])) < 4e-2


def test_generic_ir_parses_back_to_the_same_module():
    fn, args = _example("cnn")
    model = jaxlite.convert(fn, *args, quantize="int8", calibration=[args])
    generic = model.ir(generic=True)
    assert '"jquant.qconv"(' in generic and '"jlax.weight"()' in generic and "jquant.qconv %" not in generic
    assert print_module(parse_module(generic)) == model.ir()
    traced = model.ir(after="trace", generic=True)
    assert '"jlax.conv_general_dilated"(' in traced


def _netron(file) -> list[dict]:
    """Netron's own parsers (the pip package's mlir.js / tflite.js) run by node on ``file``."""
    import json
    import pathlib
    import shutil
    import subprocess

    netron = pytest.importorskip("netron")
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    script = pathlib.Path(__file__).with_name("netron_open.mjs")
    r = subprocess.run(["node", str(script), str(pathlib.Path(netron.__file__).parent), str(file)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise AssertionError(r.stderr or r.stdout)
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_netron_draws_the_generic_ir_and_the_tflite_file(tmp_path):
    fn, args = _example("cnn")
    model = jaxlite.convert(fn, *args, quantize="int8", calibration=[args])
    (tmp_path / "custom.mlir").write_text(model.ir())
    with pytest.raises(AssertionError, match="Unsupported dialect"):  # why the generic form exists
        _netron(tmp_path / "custom.mlir")
    for after in ("trace", None):
        (tmp_path / "m.mlir").write_text(model.ir(after=after, generic=True))
        [graph] = _netron(tmp_path / "m.mlir")
        counts = op_counts(parse_module(model.ir(after=after)))
        for name, n in counts.items():
            assert graph["types"].get(name) == n, (name, graph["types"])
    model.export(tmp_path / "m.tflite")
    [graph] = _netron(tmp_path / "m.tflite")
    counts = model.op_counts()
    assert graph["types"].get("Conv2D", 0) + graph["types"].get("DepthwiseConv2D", 0) == counts["jquant.qconv"]
    assert graph["types"].get("FullyConnected") == counts["jquant.qdot"]
    assert graph["inputs"] == 1 and graph["outputs"] == 1


def _R(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_fusions_never_reach_a_value_read_elsewhere(tmp_path):
    """ReLU / mean fusion into a producer whose result a loop body or a branch shares with
    the outside (the IR's one-use test sees only the region)."""
    def relu_in_branch(x, p):
        s = x + 0.1
        return lax.cond(p > 0, lambda a: jnp.maximum(a, 0.0), lambda a: a * 2, s), s

    def mean_in_scan(x):
        s = x.sum(1)
        return lax.scan(lambda c, _: (c, c / 6.0), s, None, length=2)[1], s

    x = np.array([[-1.0, 0.5, -0.3, 2.0, 0.1, -0.2]], np.float32)
    for fn, args in ((relu_in_branch, (x, np.int32(0))), (relu_in_branch, (x, np.int32(1))), (mean_in_scan, (x,))):
        model = jaxlite.convert(fn, *args, passes="")
        outs = run_litert(exported(model, tmp_path), *args)
        for out, ref in zip(outs, jax.tree.leaves(jax.jit(fn)(*args)), strict=True):
            np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_int8_codes_keep_their_quantization_through_every_op(tmp_path):
    """rev / concatenate of a ReLU output (zero point -128) with other codes / an unfused
    ReLU (a code max with the zero code) in int8 models: LiteRT runs them and agrees with
    jaxlite's runtime."""
    w1, b1, w3 = _R(64, 32, seed=1), _R(32, seed=2), _R(32, 16, seed=3)
    perm = np.random.default_rng(5).permutation(32)
    w2, b2, w4 = w1[:, perm].copy(), (b1 + 3)[perm].copy(), _R(64, 16, seed=4)
    fns = [lambda x: jnp.flip(jax.nn.relu(x @ w1 + b1), -1) @ w3,
           lambda x: jnp.concatenate([jax.nn.relu(x @ w1 + b1 + 3), x @ w2 + b2], -1) @ w4,
           lambda x: jax.nn.relu((x @ w1 + b1).reshape(4, 4, 8)).reshape(4, 32) @ w3]
    x = _R(4, 64)
    for fn in fns:
        model = jaxlite.convert(fn, x, quantize="int8", calibration=[(x,), (_R(4, 64, seed=9),)])
        out = run_litert(exported(model, tmp_path), x)[0]
        assert rel_l2(out, model.compile()(x)) < 5e-2
        assert rel_l2(out, jax.jit(fn)(x)) < 8e-2


def test_gathers_follow_jaxs_index_modes_and_flips_any_axes(tmp_path):
    table = _R(10, 6, seed=1)
    idx = np.array([12, 2, -1, 9], np.int32)
    for fn in (lambda i: jnp.take(table, i, axis=0, mode="clip"), lambda i: jnp.take(table, i, axis=0, mode="fill"),
               lambda i: jnp.take(table.T, i, axis=1, mode="fill", fill_value=-5.0)):
        out = run_litert(exported(jaxlite.convert(fn, idx), tmp_path), idx)[0]
        np.testing.assert_array_equal(out, jax.jit(fn)(idx))
    x = _R(3, 4, 5)
    flip = jaxlite.convert(lambda x: jnp.flip(x, (0, 2)), x)
    np.testing.assert_array_equal(run_litert(exported(flip, tmp_path), x)[0], np.flip(x, (0, 2)))


def test_integer_ops_tflite_computes_differently_are_export_errors(tmp_path):
    cases = [(lambda a: a + 1, np.arange(5, dtype=np.uint8)), (lambda a: a * 2, np.arange(5, dtype=np.int8)),
             (lambda a: a @ np.ones((3, 4), np.int32), np.ones((2, 3), np.int32)),
             (lambda x: lax.reduce_window(x, -2**31, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME"),
              np.zeros((1, 5, 5, 2), np.int32))]
    for fn, arg in cases:
        with pytest.raises(jaxlite.ExportError, match="cannot export"):
            jaxlite.convert(fn, arg).export(tmp_path / "m.tflite")
