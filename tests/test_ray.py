"""jaxlite.ray.Predictor: batch inference with Ray Data (one short pipeline, since Ray's
start-up is slow) and the Predictor's own rules without Ray."""

import jax
import numpy as np
import pytest

import jaxlite
from jaxlite.errors import SignatureError

W = np.linspace(-1, 1, 64 * 16, dtype=np.float32).reshape(64, 16)


def fn(x):
    return jax.nn.relu(x @ W)


def _data(rows):
    return np.random.default_rng(rows).standard_normal((rows, 64)).astype(np.float32)


@pytest.mark.slow
def test_map_batches_on_a_local_ray_instance(tmp_path):
    ray = pytest.importorskip("ray")
    jaxlite.convert(fn, _data(4)).save(tmp_path / "m.jlite")  # a static batch of 4: pieces, padded
    data = _data(103)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.from_numpy(data).map_batches(jaxlite.ray.Predictor, fn_constructor_kwargs={"path": str(tmp_path / "m.jlite")},
                                                   batch_format="numpy", batch_size=32, concurrency=1)
        out = np.concatenate([b["output"] for b in ds.iter_batches(batch_format="numpy", batch_size=None)])
    finally:
        ray.shutdown()
    np.testing.assert_allclose(out, np.asarray(jax.jit(fn)(data)), rtol=1e-5, atol=1e-5)


def test_predictor_batches_columns_and_outputs(tmp_path):
    def two(inp):
        return {"logits": fn(inp["x"]) + inp["bias"], "norm": (inp["x"] ** 2).sum(-1)}

    example = {"x": _data(4), "bias": np.ones((4, 16), np.float32)}
    jaxlite.convert(two, example, dynamic_batch=True).save(tmp_path / "two.jlite")
    jaxlite.convert(two, example).save(tmp_path / "two_static.jlite")
    data = {"bias": np.full((7, 16), 2.0, np.float32), "x": _data(7)}  # any column order, by name
    ref = jax.jit(two)(data)
    for path in ("two.jlite", "two_static.jlite"):  # any batch; a batch of 4 padded to 8, cut back to 7
        out = jaxlite.ray.Predictor(tmp_path / path)(data)
        assert sorted(out) == ["logits", "norm"]
        for k in out:
            np.testing.assert_allclose(out[k], np.asarray(ref[k]), rtol=1e-5, atol=1e-5)
    predictor = jaxlite.ray.Predictor(tmp_path / "two.jlite")
    with pytest.raises(SignatureError, match="no array named for input"):
        predictor({"x": data["x"], "b": data["bias"]})
    with pytest.raises(SignatureError, match="one row per sample"):
        predictor({"x": data["x"], "bias": data["bias"][:3]})
    with pytest.raises(SignatureError, match="dict of columns"):
        predictor(data["x"])


def test_a_one_input_model_takes_its_only_column(tmp_path):
    jaxlite.convert(fn, _data(2), dynamic_batch=True).save(tmp_path / "m.jlite")
    out = jaxlite.ray.Predictor(tmp_path / "m.jlite", direct=False)({"data": _data(5)})
    np.testing.assert_allclose(out["output"], np.asarray(jax.jit(fn)(_data(5))), rtol=1e-5, atol=1e-5)


def test_an_empty_batch_gives_empty_columns(tmp_path):
    for dynamic in (False, True):
        jaxlite.convert(fn, _data(4), dynamic_batch=dynamic).save(tmp_path / "m.jlite")
        out = jaxlite.ray.Predictor(tmp_path / "m.jlite")({"data": np.zeros((0, 64), np.float32)})
        assert out["output"].shape == (0, 16) and out["output"].dtype == np.float32
