"""The examples on device="gpu" (skipped where jax sees no GPU)."""

import jax
import numpy as np
import pytest

import jaxlite
from conftest import assert_tree_close
from jaxlite.examples import digits_cnn, digits_mlp, transformer


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _has_gpu(), reason="jax sees no GPU")]


@pytest.mark.parametrize("example", [digits_mlp, digits_cnn, transformer])
def test_examples_on_gpu(example):
    fn, args = example.factory()
    exe = jaxlite.compile(fn, *args, device="gpu")
    out = exe(*args)
    assert all(d.platform == "gpu" for d in jax.tree_util.tree_leaves(out)[0].devices())
    ref = jax.jit(fn)(*args)
    assert_tree_close(jax.device_get(out), np.asarray(jax.device_get(ref)), rtol=1e-4, atol=1e-4)


def test_saved_model_runs_on_gpu(tmp_path):
    fn, args = digits_mlp.factory()
    jaxlite.convert(fn, *args).save(tmp_path / "m.jlite")
    exe = jaxlite.load(tmp_path / "m.jlite").compile(device="gpu")
    assert_tree_close(jax.device_get(exe(*args)), np.asarray(jax.jit(fn)(*args)), rtol=1e-4, atol=1e-4)
