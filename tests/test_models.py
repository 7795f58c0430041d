"""Whole models from Flax and Equinox, pytree inputs/outputs, weight naming."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlite
from conftest import assert_tree_close, check_against_jax
from jaxlite.examples import digits, digits_cnn, digits_mlp, transformer


@pytest.mark.parametrize("example", [digits_mlp, digits_cnn, transformer])
def test_examples_match_jax(example):
    fn, args = example.factory()
    check_against_jax(fn, *args, rtol=1e-5, atol=1e-5)


def test_flax_parameter_paths_become_weight_names():
    fn, args = digits_cnn.factory()
    model = jaxlite.convert(fn, *args, passes="")
    names = set(model.weights)
    assert {"params.Conv_0.kernel", "params.Conv_0.bias", "batch_stats.BatchNorm_0.mean",
            "params.Dense_0.kernel"} <= names
    assert "jlax.weight @params.Conv_0.kernel" in model.ir()
    optimized = jaxlite.convert(fn, *args)  # BatchNorm folded into the kernels: names say so
    assert {"params.Conv_0.kernel.folded", "params.Conv_0.bias_folded", "params.Dense_0.kernel",
            "params.Dense_0.bias"} <= set(optimized.weights)


def test_digits_cnn_accuracy_matches_jax_on_held_out_split():
    fn, _ = digits_cnn.factory()
    _, _, x_test, y_test = digits.load(images=True)
    exe = jaxlite.compile(fn, x_test)
    acc = digits.accuracy(exe(x_test), y_test)
    assert acc == digits.accuracy(jax.jit(fn)(x_test), y_test)
    assert acc > 0.9


def test_flax_batchnorm_training_mode_with_mutable_collections():
    model_def, variables = digits_cnn.trained()
    x = digits.load(images=True)[2][:8]

    def train_step_outputs(x):
        return model_def.apply(variables, x, train=True, mutable=["batch_stats"])

    check_against_jax(train_step_outputs, x, atol=1e-5)


def test_equinox_mlp():
    eqx = pytest.importorskip("equinox")
    mlp = eqx.nn.MLP(8, 3, 16, 2, key=jax.random.PRNGKey(0), activation=jax.nn.gelu)
    x = np.random.default_rng(0).standard_normal((8,)).astype(np.float32)
    model = check_against_jax(lambda v: mlp(v), x)
    assert len(model.weights) == 6
    assert any("layers" in n for n in model.weights)
    check_against_jax(jax.vmap(mlp), np.stack([x, -x]))


class Pair(NamedTuple):
    logits: jax.Array
    aux: dict


def test_pytree_inputs_and_outputs():
    def fn(batch, scale):
        h = batch["image"].reshape(2, -1) @ jnp.ones((12, 3)) * scale
        return Pair(h, {"mask": batch["mask"], "stats": (h.mean(), None, [h.max()])})

    args = ({"image": np.ones((2, 3, 4), np.float32), "mask": np.array([True, False])}, np.float32(2))
    model = check_against_jax(fn, *args)
    out = model.compile()(*args)
    assert isinstance(out, Pair) and out.aux["stats"][1] is None
    assert [s.name for s in model.signature.inputs] == ["batch['image']", "batch['mask']", "scale"]


def test_closure_over_numpy_and_python_scalars():
    w = np.arange(200, dtype=np.float32).reshape(20, 10)

    def fn(x):
        return x @ w * 0.5 + 1

    model = jaxlite.convert(fn, np.ones((2, 20), np.float32), passes="")
    assert list(model.weights) == ["w"]
    model = check_against_jax(fn, np.ones((2, 20), np.float32))
    assert sorted(model.weights) == ["w.bias_folded", "w.folded"]  # (x@w)*0.5+1 folded into w


def test_identity_and_constant_outputs():
    def fn(x):
        return x, jnp.zeros(3), 2.0 * jnp.ones((2, 2))
    check_against_jax(fn, np.ones(4, np.float32))


def test_compile_shortcut_and_exe_model():
    exe = jaxlite.compile(lambda x: jnp.tanh(x) * 2, np.ones((3,), np.float32))
    assert isinstance(exe.model, jaxlite.Model)
    assert_tree_close(exe(np.zeros(3, np.float32)), np.zeros(3, np.float32))


def test_python_scalar_arguments_accepted_where_jax_accepts_them():
    exe = jaxlite.compile(lambda x, s: x * s, np.ones(3, np.float32), np.float32(2))
    assert_tree_close(exe(np.ones(3, np.float32), 3.0), np.full(3, 3.0, np.float32))
    # float64 numpy inputs are canonicalised to float32, as jax.jit does
    assert_tree_close(exe(np.ones(3), np.float32(1)), np.ones(3, np.float32))


def test_embedding_budget_does_not_change_results():
    fn, args = digits_cnn.factory()
    model = jaxlite.convert(fn, *args)
    as_args = model.compile(embed_weights_bytes=0)
    embedded = model.compile(embed_weights_bytes=1 << 30)
    assert len(as_args._weights) == len(model.weights) and not embedded._weights
    assert_tree_close(as_args(*args), embedded(*args), rtol=1e-6, atol=1e-6)
