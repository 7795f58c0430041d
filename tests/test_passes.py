"""Each pass: the IR before and after, and outputs unchanged (compared with jax.jit)."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlite
import jaxlite.passes
from conftest import assert_tree_close
from jaxlite.examples import digits, digits_cnn

X = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)


def ops(model) -> Counter:
    return Counter(op.name for op in model.module.walk()
                   if op.name not in ("builtin.module", "func.func", "func.return"))


def convert_checked(fn, *args, passes, rtol=1e-5, atol=1e-6):
    before = jaxlite.convert(fn, *args, passes="")
    after = jaxlite.convert(fn, *args, passes=passes)
    ref = jax.jit(fn)(*args)
    assert_tree_close(before.compile()(*args), ref, rtol, atol)
    assert_tree_close(after.compile()(*args), ref, rtol, atol)
    return before, after


def test_seed_example_collects_like_terms_into_one_multiply_by_12():
    before, after = convert_checked(lambda a: 3 * a + 4 * a + 5 * a, X, passes="canonicalize")
    assert ops(before)["jlax.mul"] == 3 and ops(before)["jlax.add"] == 2
    assert ops(after) == Counter({"jlax.mul": 1, "jlax.constant": 1})
    text = after.ir()
    assert "jlax.constant dense<1.200000e+01> : tensor<f32>" in text
    assert "jlax.mul %0, %1" in text


@pytest.mark.parametrize("fn, gone", [
    (lambda x: x + 0.0, "jlax.add"), (lambda x: x - 0.0, "jlax.sub"), (lambda x: x * 1.0, "jlax.mul"),
    (lambda x: x / 1.0, "jlax.div"), (lambda x: jnp.negative(jnp.negative(x)), "jlax.neg"),
    (lambda x: x.T.T, "jlax.transpose"), (lambda x: x.reshape(2, 16).reshape(32), None),
    (lambda x: x.astype(jnp.float32), "jlax.convert_element_type"),
    (lambda x: x[:, :], "jlax.slice"), (lambda x: jnp.pad(x, 0), "jlax.pad"),
])
def test_identities_disappear(fn, gone):
    before, after = convert_checked(fn, X, passes="canonicalize")
    if gone is not None:
        assert ops(after)[gone] == 0
    assert sum(ops(after).values()) <= max(1, sum(ops(before).values()) - 1)


def test_reshape_and_broadcast_chains_merge():
    _, after = convert_checked(lambda x: x.reshape(2, 16).reshape(32) + 1, X, passes="canonicalize")
    assert ops(after)["jlax.reshape"] == 1
    _, after = convert_checked(lambda x: jnp.broadcast_to(jnp.broadcast_to(x[0], (3, 8)), (2, 3, 8)),
                               X, passes="canonicalize")
    assert ops(after)["jlax.broadcast_in_dim"] == 1


@pytest.mark.parametrize("fn, kind, count", [
    (lambda x: (x * 2.0) * 3.0, "jlax.mul", 1),
    (lambda x: (x + 1.0) + 2.0, "jlax.add", 1),
    (lambda x: (x / 2.0) / 4.0, "jlax.div", 1),
    (lambda x: (x * 6.0) / 3.0, "jlax.mul", 1),
    (lambda x: x - x * 0.25, "jlax.mul", 1),
    (lambda x: x + x, "jlax.mul", 1),
])
def test_constant_chains_merge(fn, kind, count):
    _, after = convert_checked(fn, X, passes="canonicalize")
    assert ops(after)[kind] == count
    assert sum(ops(after).values()) == 2  # the op and its constant


def test_ieee_unsafe_rewrites_only_with_fast_math():
    inf_x = X.copy()
    inf_x[0, 0] = np.inf
    for fn in (lambda x: x - x, lambda x: x * 0.0):
        _, safe = convert_checked(fn, inf_x, passes="canonicalize")
        assert ops(safe)["jlax.sub"] + ops(safe)["jlax.mul"] == 1
        fast = jaxlite.convert(fn, inf_x, passes="canonicalize{fast-math=true}")
        assert ops(fast)["jlax.sub"] + ops(fast)["jlax.mul"] == 0
        assert np.all(np.asarray(fast.compile()(X)) == 0)


def test_constant_folding_of_weights_and_no_blowup_of_broadcasts():
    w = jnp.asarray(np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32))
    b = jnp.arange(16, dtype=jnp.float32)

    def fn(x):
        scale = jnp.exp(b) / jnp.exp(b).sum()   # all-constant: folded at convert time
        return (x @ (w * 2.0)) + scale           # scale is broadcast to (4, 16) at runtime

    before, after = convert_checked(fn, X, passes="canonicalize,dce")
    assert ops(after)["jlax.exp"] == 0 and ops(after)["jlax.reduce_sum"] == 0
    assert after.weights.nbytes <= before.weights.nbytes  # nothing materialized bigger
    shapes = sorted(a.shape for a in after.weights.arrays.values())
    assert (4, 16) not in shapes


def test_cse_merges_duplicates():
    def fn(x):
        return jnp.sin(x) * 2 + jnp.sin(x) * 2
    before, after = convert_checked(fn, X, passes="cse")
    assert ops(before)["jlax.sin"] == 2 and ops(after)["jlax.sin"] == 1


def test_dce_removes_stop_gradient_copies_and_unused_work():
    def fn(x):
        unused = jnp.exp(x) @ x.T  # noqa: F841 - dead
        return jax.lax.stop_gradient(jnp.copy(x)) + 1
    before, after = convert_checked(fn, X, passes="dce")
    assert ops(before)["jlax.exp"] == 1 and ops(before)["jlax.stop_gradient"] == 1
    assert ops(after) == Counter({"jlax.add": 1, "jlax.constant": 1})


def test_outputs_selection_prunes_training_only_work():
    model_def, variables = digits_cnn.trained()
    x = digits.load(images=True)[2][:8]

    def train_mode(x):  # returns (logits, {"batch_stats": updated running statistics})
        return model_def.apply(variables, x, train=True, mutable=["batch_stats"])

    full = jaxlite.convert(train_mode, x)
    logits_only = jaxlite.convert(train_mode, x, outputs=0)
    assert len(logits_only.signature.outputs) == 1 and len(full.signature.outputs) == 5
    assert sum(ops(logits_only).values()) < sum(ops(full).values())
    assert_tree_close(logits_only.compile()(x), jax.jit(train_mode)(x)[0], rtol=1e-5, atol=1e-5)
    by_key = jaxlite.convert(lambda v: {"a": v * 2, "b": jnp.exp(v)}, X, outputs="a")
    assert ops(by_key)["jlax.exp"] == 0


def test_fold_batchnorm_and_fuse_leave_one_fused_op_per_layer():
    fn, args = digits_cnn.factory()
    before, after = convert_checked(fn, *args, passes="canonicalize,cse,dce,fold-batchnorm,fuse,canonicalize,dce",
                                    atol=1e-5)
    kinds = ops(after)
    assert kinds["jfuse.conv"] == 2 and kinds["jfuse.dot"] == 1 and kinds["jlax.reduce_window_max"] == 1
    assert set(kinds) == {"jfuse.conv", "jfuse.dot", "jlax.reduce_window_max", "jlax.reshape", "jlax.weight"}
    assert 'activation = #jfuse<activation relu>' in after.ir()
    assert sum(ops(before).values()) > 40 and sum(kinds.values()) <= 12


def test_fold_affine_handles_dense_then_batchnorm_and_reversed_operands():
    import flax.linen as nn

    class DenseBN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(16)(x)
            x = nn.BatchNorm(use_running_average=True)(x)
            return nn.relu(x)

    model = DenseBN()
    variables = model.init(jax.random.PRNGKey(0), X)
    rng = np.random.default_rng(3)
    variables = jax.tree.map(lambda v: v + rng.uniform(0.1, 0.5, v.shape).astype(np.float32), variables)
    _, after = convert_checked(lambda x: model.apply(variables, x), X, passes="canonicalize,dce,fold-affine,fuse",
                               rtol=1e-5, atol=1e-5)
    assert ops(after) == Counter({"jfuse.dot": 1, "jlax.weight": 2})
    w = jnp.asarray(rng.standard_normal((8, 5)).astype(np.float32))
    _, after = convert_checked(lambda x: 2.0 - (x @ w) / 4.0, X, passes="canonicalize,fold-affine,fuse")
    assert ops(after)["jfuse.dot"] == 1 and sum(ops(after).values()) == 3


def test_attention_scale_folds_into_the_query_projection():
    """scores / sqrt(d) moves through the head reshape and transpose onto the query
    projection, whose weight and bias take it: no op scales the scores. A scale whose dot
    has no layer behind either input (both are the model's inputs) stays where it is."""
    rng = np.random.default_rng(4)
    wq, wk = (jnp.asarray(rng.standard_normal((8, 8)).astype(np.float32)) for _ in range(2))
    bq = jnp.asarray(rng.standard_normal(8).astype(np.float32))

    def attention_scores(x):
        q = (x @ wq + bq).reshape(4, 2, 4).transpose(1, 0, 2)
        k = (x @ wk).reshape(4, 2, 4).transpose(1, 0, 2)
        return jax.nn.softmax(jnp.einsum("hqd,hkd->hqk", q, k) / jnp.sqrt(3.0))

    before, after = convert_checked(attention_scores, X, passes="canonicalize,dce,fold-affine,fuse,dce")
    assert "jlax.div" not in ops(after) and "jlax.mul" not in ops(after) and ops(after)["jfuse.softmax"] == 1
    assert ops(after)["jfuse.dot"] == 1 and ops(after)["jlax.dot_general"] == 2  # q with its bias; k; scores
    _, unchanged = convert_checked(lambda q, k: jnp.einsum("qd,kd->qk", q, k) * 0.5, X, X,
                                   passes="canonicalize,dce,fold-affine,fuse,dce")
    assert ops(unchanged)["jlax.dot_general"] == 1 and ops(unchanged)["jlax.mul"] == 1


ACTS = {
    "relu": jax.nn.relu, "relu6": jax.nn.relu6, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh,
    "silu": jax.nn.silu, "gelu_tanh": lambda y: jax.nn.gelu(y, approximate=True),
    "gelu_erf": lambda y: jax.nn.gelu(y, approximate=False),
}


@pytest.mark.parametrize("name", sorted(ACTS))
def test_fuse_recognises_activations(name):
    w = jnp.asarray(np.random.default_rng(2).standard_normal((8, 6)).astype(np.float32))
    b = jnp.asarray(np.random.default_rng(3).standard_normal(6).astype(np.float32))
    _, after = convert_checked(lambda x: ACTS[name](x @ w + b), X, passes="canonicalize,dce,fuse")
    assert ops(after) == Counter({"jfuse.dot": 1, "jlax.weight": 2})
    assert f'activation = #jfuse<activation {name}>' in after.ir()


def test_fuse_conv_without_bias_and_never_takes_a_residual_as_bias():
    k = jnp.asarray(np.random.default_rng(4).standard_normal((3, 3, 2, 2)).astype(np.float32))
    img = np.random.default_rng(5).standard_normal((1, 5, 5, 2)).astype(np.float32)

    def fn(x):
        y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(y + x)  # residual: not a bias

    _, after = convert_checked(fn, img, passes="canonicalize,fuse")
    assert ops(after)["jfuse.conv"] == 0 or "bias" not in after.ir().split("jfuse.conv")[1].split("\n")[0]
    _, after = convert_checked(lambda x: jax.nn.relu(jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))), img, passes="fuse")
    assert ops(after)["jfuse.conv"] == 1 and ops(after)["jlax.max"] == 0


def test_pipeline_options_and_inspection(capsys):
    fn = lambda x: jax.nn.relu(x @ jnp.ones((8, 3)) + 1.0)  # noqa: E731
    none = jaxlite.convert(fn, X, passes="")
    assert none.ir() == none.ir(after="trace") and len(none.ir_history) == 1
    assert jaxlite.convert(fn, X, passes=[]).ir() == none.ir()
    model = jaxlite.convert(fn, X, passes=["canonicalize", "fuse", "canonicalize"], print_ir_after_all=True)
    assert [n for n, _ in model.ir_history] == ["trace", "canonicalize", "fuse", "canonicalize#2"]
    assert "jfuse.dot" in model.ir(after="fuse") and "jfuse.dot" not in model.ir(after="canonicalize")
    printed = capsys.readouterr().out
    assert printed.count("// -----// IR after") == 4 and "IR after fuse" in printed
    jaxlite.convert(fn, X, passes="canonicalize,fuse", print_ir_after="fuse", print_stats=True)
    captured = capsys.readouterr()
    assert captured.out.count("IR after") == 1
    assert "fuse: " in captured.err and " ops (" in captured.err
    assert [s.name for s in model.pass_stats] == ["canonicalize", "fuse", "canonicalize"]


def test_default_pipeline_preserves_outputs_under_control_flow():
    def fn(x):
        def body(c, xi):
            return c * 0.5 + jnp.tanh(xi @ jnp.ones((8, 8)) * 1.0 + 0.0), c.sum()
        return jax.lax.scan(body, jnp.zeros(8), x)
    convert_checked(fn, X, passes=jaxlite.passes.DEFAULT_PIPELINE)


def _layer_norms():
    import flax.linen as nn

    rng = np.random.default_rng(7)
    g = rng.uniform(0.5, 1.5, 24).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    flax_ln = nn.LayerNorm()
    variables = jax.tree.map(lambda v: v + rng.uniform(0.1, 0.5, v.shape).astype(np.float32),
                             flax_ln.init(jax.random.PRNGKey(0), np.zeros((2, 24), np.float32)))

    def jnp_var(x):  # Equinox / Haiku style: the variance of the centred values
        return (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5) * g + b

    def unscaled(x):
        return (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(jnp.mean(jnp.square(x - x.mean(-1, keepdims=True)),
                                                                        -1, keepdims=True) + 1e-6)
    import equinox as eqx

    eqx_ln = eqx.tree_at(lambda m: (m.weight, m.bias), eqx.nn.LayerNorm(24), (jnp.asarray(g), jnp.asarray(b)))
    return {"flax": (lambda x: flax_ln.apply(variables, x), 2),
            "equinox": (lambda x: jax.vmap(jax.vmap(eqx_ln))(x), 2),
            "equinox-2d": (lambda x: jax.vmap(eqx_ln)(x), 2),
            "flax-no-scale": (lambda x: nn.LayerNorm(use_scale=False, use_bias=False).apply({}, x), 0),
            "jnp-var": (jnp_var, 2), "unscaled": (unscaled, 0)}


@pytest.mark.parametrize("shape", [(3, 5, 24), (1, 24)])
@pytest.mark.parametrize("name", ["flax", "flax-no-scale", "equinox", "jnp-var", "unscaled"])
def test_fuse_turns_layer_norms_into_one_op(name, shape):
    fn, vectors = _layer_norms()[name]
    if name == "equinox" and len(shape) == 2:
        fn = _layer_norms()["equinox-2d"][0]
    x = (np.random.default_rng(8).standard_normal(shape) * 4 + 2).astype(np.float32)
    before, after = convert_checked(fn, x, passes="canonicalize,cse,dce,fuse", rtol=1e-5, atol=2e-5)
    assert sum(ops(before).values()) >= 12
    kinds = ops(after)
    assert kinds["jfuse.layer_norm"] == 1 and set(kinds) <= {"jfuse.layer_norm", "jlax.weight", "jlax.constant"}
    line = next(s for s in after.ir().splitlines() if "jfuse.layer_norm" in s)
    assert line.count("scale %") + line.count("bias %") == vectors
    assert_tree_close(after.compile(native_gemm=False)(x), jax.jit(fn)(x), 1e-5, 2e-5)


def test_fuse_turns_softmax_into_one_op_and_keeps_what_it_cannot_take():
    x = (np.random.default_rng(9).standard_normal((2, 3, 33)) * 5).astype(np.float32)
    _, after = convert_checked(jax.nn.softmax, x, passes="canonicalize,dce,fuse")
    assert ops(after) == Counter({"jfuse.softmax": 1})
    # over another axis, or with an intermediate read elsewhere: left as it is
    _, after = convert_checked(lambda x: jax.nn.softmax(x, axis=1), x, passes="canonicalize,dce,fuse")
    assert ops(after)["jfuse.softmax"] == 0 and ops(after)["jlax.exp"] == 1

    def with_stats(x):
        mean = x.mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(jnp.mean(jnp.square(x - mean), -1, keepdims=True) + 1e-6), mean

    _, after = convert_checked(with_stats, x, passes="canonicalize,cse,dce,fuse")
    assert ops(after)["jfuse.layer_norm"] == 0 and ops(after)["jlax.rsqrt"] == 1


def test_transformer_block_fuses_its_layer_norms_and_softmax():
    from jaxlite.examples import transformer

    fn, args = transformer.factory(num_layers=2, d_model=32, heads=2, seq=8)
    _, after = convert_checked(fn, *args, passes="canonicalize,cse,dce,fold-affine,fuse,canonicalize,dce",
                               rtol=1e-4, atol=1e-5)
    kinds = ops(after)
    assert kinds["jfuse.layer_norm"] == 5 and kinds["jfuse.softmax"] == 2
    assert kinds["jlax.rsqrt"] == kinds["jlax.exp"] == kinds["jlax.reduce_sum"] == 0


def test_select_n_with_a_constant_selector_is_folded():
    _, after = convert_checked(lambda x: jax.lax.select_n(jnp.asarray(True), jnp.full_like(x, jnp.nan), x * 2), X,
                               passes="canonicalize,dce")
    assert ops(after)["jlax.select_n"] == 0


def test_dense_general_bias_and_scale_fold_into_one_fused_dot():
    """flax's DenseGeneral (attention's [d_model, heads, head_dim] projections): the bias
    varies along two output axes; the 1/sqrt(head_dim) scale folds into the kernel."""
    import flax.linen as nn

    layer = nn.DenseGeneral(features=(3, 4))
    x = np.random.default_rng(12).standard_normal((2, 5, 6)).astype(np.float32)
    variables = jax.tree.map(lambda v: v + 0.3, layer.init(jax.random.PRNGKey(0), x))
    fn = lambda x: layer.apply(variables, x) / 2.0  # noqa: E731
    before, after = convert_checked(fn, x, passes="canonicalize,dce,fold-affine,fuse,canonicalize,dce")
    assert ops(before)["jlax.div"] == 1 and ops(before)["jlax.add"] == 1
    assert ops(after) == Counter({"jfuse.dot": 1, "jlax.weight": 2})
    assert "tensor<1x1x3x4xf32> -> tensor<2x5x3x4xf32>" in after.ir()


# (input shape, kernel shape, lhs_dilation, padding, dimension names, feature groups)
TRANSPOSED_CONVS = [
    ((2, 5, 5, 3), (3, 3, 3, 4), (2, 2), ((2, 1), (2, 1)), ("NHWC", "HWIO", "NHWC"), 1),    # flax SAME, k 3
    ((1, 4, 6, 2), (4, 4, 2, 3), (2, 2), ((2, 2), (2, 2)), ("NHWC", "HWIO", "NHWC"), 1),    # k 4: output 2x
    ((1, 4, 4, 2), (3, 3, 2, 3), (2, 2), ((0, 0), (1, -1)), ("NHWC", "HWIO", "NHWC"), 1),   # low/negative pads
    ((1, 4, 4, 5), (6, 2, 3, 3), (3, 2), ((3, 4), (1, 2)), ("NCHW", "OIHW", "NCHW"), 2),    # strides 3x2, groups
    ((2, 7, 3), (5, 3, 6), (3,), ((4, 4),), ("NWC", "WIO", "NWC"), 1),                      # 1-D, output not 3q
]


@pytest.mark.parametrize("case", TRANSPOSED_CONVS)
def test_split_transposed_conv_is_exact_and_leaves_no_input_dilation(case):
    xs, ws, dilation, padding, names, groups = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32)
    w = jnp.asarray(rng.standard_normal(ws).astype(np.float32))
    dn = jax.lax.conv_dimension_numbers(xs, ws, names)

    def fn(x):
        y = jax.lax.conv_general_dilated(x, w, (1,) * len(dilation), padding, dilation, None, dn, groups,
                                         precision="highest")
        return jax.nn.relu(y + 0.5)
    before, after = convert_checked(fn, x, passes="canonicalize,fuse,split-transposed-conv,canonicalize,dce",
                                    rtol=1e-5, atol=1e-5)
    assert "lhs_dilation = array<i64: 1" in after.ir() and "lhs_dilation = array<i64: 2" not in after.ir() \
        and "lhs_dilation = array<i64: 3" not in after.ir()
    phases = int(np.prod(dilation))
    assert ops(after)["jfuse.conv"] == phases  # bias and relu stay fused on every phase
    # the kernel's taps are partitioned among the phases: no weight bytes added
    assert after.weights.nbytes == before.weights.nbytes


def test_split_transposed_conv_keeps_what_it_cannot_split():
    """A kernel narrower than the stride would leave phases without taps; strided windows
    are not transposed convolutions: both stay one conv with input dilation."""
    x = np.ones((1, 5, 5, 2), np.float32)
    w = jnp.ones((1, 1, 2, 3))
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    for strides, dilation in (((1, 1), (2, 2)), ((2, 1), (2, 2))):
        def fn(x, strides=strides, dilation=dilation):
            return jax.lax.conv_general_dilated(x, w, strides, ((0, 0), (0, 0)), dilation, None, dn)
        _, after = convert_checked(fn, x, passes="split-transposed-conv")
        assert ops(after)["jlax.conv_general_dilated"] == 1


def test_flax_conv_transpose_decoder_is_split_by_default_and_quantizes_per_phase():
    import flax.linen as nn

    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, z):
            x = nn.relu(nn.ConvTranspose(8, (4, 4), strides=(2, 2))(z))
            return nn.ConvTranspose(3, (3, 3), strides=(2, 2))(x)

    z = np.random.default_rng(1).standard_normal((2, 4, 4, 6)).astype(np.float32)
    module = Decoder()
    variables = module.init(jax.random.PRNGKey(0), z)

    def fn(z):
        return module.apply(variables, z)
    model = jaxlite.convert(fn, z)
    assert ops(model)["jfuse.conv"] == 8 and "lhs_dilation = array<i64: 2" not in model.ir()
    assert_tree_close(model.compile()(z), jax.jit(fn)(z), rtol=1e-4, atol=1e-4)
    quantized = jaxlite.convert(fn, z, quantize="dynamic")
    assert ops(quantized)["jquant.dynamic_conv"] == 8
    ref = np.asarray(jax.jit(fn)(z))
    assert np.linalg.norm(np.asarray(quantized.compile()(z)) - ref) <= 0.03 * np.linalg.norm(ref)


def _rnn(cell, hidden=8, steps=5, features=4):
    import flax.linen as nn

    class Rnn(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.RNN(cell(hidden))(x)[:, -1])

    x = np.random.default_rng(2).standard_normal((2, steps, features)).astype(np.float32)
    module = Rnn()
    variables = module.init(jax.random.PRNGKey(0), x)
    return (lambda x: module.apply(variables, x)), x


def test_capture_constants_reads_an_rnns_weights_inside_its_scan():
    import flax.linen as nn

    fn, x = _rnn(nn.GRUCell)
    before, after = convert_checked(fn, x, passes="capture-constants")
    assert "num_consts = 10" in before.ir()  # flax hands the cell's kernels and biases to the scan
    assert "num_consts = 0" in after.ir()
    scan = next(op for op in after.module.walk() if op.name == "jlax.scan")
    body_dots = [op for op in scan.walk() if getattr(op, "PRIMITIVE", None) == "dot_general"]
    assert len(body_dots) == 6 and all(op.operands[1].owner.name == "jlax.weight" for op in body_dots)


def test_capture_constants_hoists_loop_invariant_work_out_of_the_loop():
    """flax's OptimizedLSTMCell concatenates its gate kernels on every step: hoisted, the
    concatenation of weights folds into one weight (default pipeline)."""
    import flax.linen as nn

    fn, x = _rnn(nn.OptimizedLSTMCell)
    before, after = convert_checked(fn, x, passes=jaxlite.passes.DEFAULT_PIPELINE, rtol=1e-4, atol=1e-5)
    scan = next(op for op in after.module.walk() if op.name == "jlax.scan")
    inside = Counter(op.name for op in scan.body.block.ops)
    dots = [op for op in scan.body.block.ops if getattr(op, "PRIMITIVE", None) == "dot_general"]
    assert "jlax.concatenate" not in inside and len(dots) == 2
    assert all(op.operands[1].owner.name == "jlax.weight" for op in dots)
    before_scan = next(op for op in before.module.walk() if op.name == "jlax.scan")
    assert Counter(op.name for op in before_scan.body.block.ops)["jlax.concatenate"] == 3


def test_capture_constants_in_while_and_cond():
    w = jnp.asarray(np.random.default_rng(3).standard_normal((4, 4)).astype(np.float32) * 0.3)

    def fn(x):
        def body(c):
            i, h = c
            return i + 1, jnp.tanh(h @ w)
        _, h = jax.lax.while_loop(lambda c: c[0] < 3, body, (0, x))
        return jax.lax.cond(h.sum() > 0, lambda h: h @ w, lambda h: h @ w.T, h)

    before, after = convert_checked(fn, X[:, :4], passes="capture-constants")
    assert "body_nconsts = 1" in before.ir() and "body_nconsts = 0" in after.ir()
    cond = next(op for op in after.module.walk() if op.name == "jlax.cond")
    assert len(cond.operands) == 2  # the index and h: the weight is read by each branch


def test_weights_move_to_the_right_of_dots():
    """jnp.einsum may put the weight first; canonicalize swaps it into the rhs (the form fuse
    and quantize match), the transposes cancel, outputs unchanged."""
    w = jnp.asarray(np.random.default_rng(5).standard_normal((8, 6)).astype(np.float32))
    x = np.random.default_rng(6).standard_normal((3, 8, 5)).astype(np.float32)

    def fn(x):
        return jnp.einsum("btc,tk->bkc", x, w)
    before, after = convert_checked(fn, x, passes="canonicalize")
    dot_before = next(op for op in before.module.walk() if getattr(op, "PRIMITIVE", None) == "dot_general")
    dot_after = next(op for op in after.module.walk() if getattr(op, "PRIMITIVE", None) == "dot_general")
    assert dot_before.operands[0].owner.name == "jlax.weight"
    assert dot_after.operands[1].owner.name == "jlax.weight" and ops(after)["jlax.transpose"] == 1
    assert "jquant.dynamic_dot" in jaxlite.convert(fn, x, quantize="dynamic").ir()


def _stacked_layers(reverse=False, layers=4, d=8):
    rng = np.random.default_rng(8)
    w = jnp.asarray(rng.standard_normal((layers, d, d)).astype(np.float32) / np.sqrt(d))
    b = jnp.asarray(rng.standard_normal((layers, d)).astype(np.float32) * 0.1)

    def fn(x):
        def layer(h, wb):
            out = jnp.tanh(h @ wb[0] + wb[1])
            return out, out.sum(axis=0)
        return jax.lax.scan(layer, x, (w, b), reverse=reverse)
    return fn, rng.standard_normal((3, d)).astype(np.float32)


@pytest.mark.parametrize("reverse", [False, True])
def test_unroll_layer_scans_gives_every_layer_its_own_weights(reverse):
    fn, x = _stacked_layers(reverse)
    before, after = convert_checked(fn, x, passes="unroll-layer-scans,canonicalize,dce,fuse")
    assert ops(before)["jlax.scan"] == 1 and ops(after)["jlax.scan"] == 0
    assert ops(after)["jfuse.dot"] == 4 and ops(after)["jlax.weight"] == 8  # a kernel and a bias per layer
    assert after.weights.nbytes == before.weights.nbytes


def test_unroll_layer_scans_leaves_time_loops_alone():
    """A scan over activations (time steps) is not a stack of layers."""
    w = jnp.asarray(np.random.default_rng(9).standard_normal((8, 8)).astype(np.float32) / 3)

    def fn(xs):
        return jax.lax.scan(lambda h, x: (jnp.tanh(h @ w + x), None), jnp.zeros(8), xs)[0]
    _, after = convert_checked(fn, np.ones((5, 8), np.float32), passes="capture-constants,unroll-layer-scans")
    assert ops(after)["jlax.scan"] == 1
