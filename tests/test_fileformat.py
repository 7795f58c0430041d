"""The .jlite file: round trip, atomic save, and every way a damaged file is rejected."""

import json
import os
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxlite
from conftest import assert_tree_close
from jaxlite.compiler import fileformat


def _model():
    w = jnp.asarray(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    b = jnp.arange(8, dtype=jnp.float32)

    def fn(inputs):
        h = inputs["x"] @ w + b
        return {"y": jnp.tanh(h), "n": (h.sum(), inputs["t"] * 2)}

    args = ({"x": np.ones((4, 16), np.float32), "t": np.int32(3)},)
    return jaxlite.convert(fn, *args), args


@pytest.fixture
def saved(tmp_path):
    model, args = _model()
    path = tmp_path / "m.jlite"
    model.save(path)
    return model, args, path


def test_round_trip_equals_in_memory_model(saved):
    model, args, path = saved
    loaded = jaxlite.load(path)
    assert loaded.ir() == model.ir()
    assert set(loaded.weights) == set(model.weights)
    out = loaded.compile()(*args)
    assert_tree_close(out, model.compile()(*args), rtol=0, atol=0)
    assert isinstance(out, dict) and set(out) == {"y", "n"}


def test_weights_are_memory_mapped_not_copied(saved):
    _, _, path = saved
    loaded = jaxlite.load(path)
    assert all(isinstance(a, np.memmap) for a in loaded.weights.arrays.values())


def test_no_pickle_in_file(saved):
    _, _, path = saved
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names[:2] == ["manifest.json", "model.mlir"]
        assert all(n.endswith(".npy") for n in names[2:])
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["format"] == "jaxlite" and manifest["format_version"] == fileformat.FORMAT_VERSION == 3


def test_save_is_atomic(tmp_path, monkeypatch):
    model, _ = _model()
    path = tmp_path / "m.jlite"
    model.save(path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.jlite"]


def _rewrite(path, out, *, drop=(), replace=None, extra=None):
    replace = replace or {}
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename in drop:
                continue
            data = replace.get(info.filename, src.read(info.filename))
            dst.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            dst.writestr(name, data)
    return out


def _manifest(path):
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("manifest.json"))


def test_not_a_zip(tmp_path):
    p = tmp_path / "bad.jlite"
    p.write_text("hello")
    with pytest.raises(jaxlite.ModelFormatError, match="not a zip"):
        jaxlite.load(p)


def test_missing_file(tmp_path):
    with pytest.raises(jaxlite.ModelFormatError, match="no such file"):
        jaxlite.load(tmp_path / "nope.jlite")


def test_truncated(saved, tmp_path):
    _, _, path = saved
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        p = tmp_path / f"cut{cut}.jlite"
        p.write_bytes(data[:cut])
        with pytest.raises(jaxlite.ModelFormatError):
            jaxlite.load(p)


def test_truncated_inside_weight_data(saved, tmp_path):
    _, _, path = saved
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("weights/0.npy")
    data = bytearray(path.read_bytes())
    # keep the central directory but cut bytes from the weight: simulate with a member
    # whose declared size runs past the end of the file
    p = tmp_path / "short.jlite"
    p.write_bytes(bytes(data[: info.header_offset + 40]))
    with pytest.raises(jaxlite.ModelFormatError):
        jaxlite.load(p)


def test_missing_members(saved, tmp_path):
    _, _, path = saved
    for member, msg in (("manifest.json", "missing member 'manifest.json'"),
                        ("model.mlir", "missing member 'model.mlir'"),
                        ("weights/0.npy", "missing member 'weights/0.npy'")):
        p = _rewrite(path, tmp_path / "x.jlite", drop=(member,))
        with pytest.raises(jaxlite.ModelFormatError, match=msg):
            jaxlite.load(p)


def test_unknown_format_version(saved, tmp_path):
    _, _, path = saved
    m = _manifest(path)
    m["format_version"] = 99
    p = _rewrite(path, tmp_path / "x.jlite", replace={"manifest.json": json.dumps(m)})
    with pytest.raises(jaxlite.ModelFormatError, match="unknown format version 99"):
        jaxlite.load(p)


def test_bad_manifest_json(saved, tmp_path):
    _, _, path = saved
    p = _rewrite(path, tmp_path / "x.jlite", replace={"manifest.json": "{not json"})
    with pytest.raises(jaxlite.ModelFormatError, match="not valid JSON"):
        jaxlite.load(p)


def test_ir_that_does_not_parse(saved, tmp_path):
    _, _, path = saved
    p = _rewrite(path, tmp_path / "x.jlite", replace={"model.mlir": "builtin.module { this is not IR }"})
    with pytest.raises(jaxlite.ModelFormatError, match="does not parse"):
        jaxlite.load(p)


def test_ir_that_does_not_verify(saved, tmp_path):
    _, _, path = saved
    with zipfile.ZipFile(path) as zf:
        ir = zf.read("model.mlir").decode()
    bad = ir.replace("jlax.tanh", "jlax.reshape", 1)  # a reshape with no new_sizes
    p = _rewrite(path, tmp_path / "x.jlite", replace={"model.mlir": bad})
    with pytest.raises(jaxlite.ModelFormatError, match="does not verify"):
        jaxlite.load(p)


def test_weight_of_wrong_shape_or_dtype(saved, tmp_path):
    _, _, path = saved
    m = _manifest(path)
    name = next(n for n, e in m["weights"].items() if e["shape"] == [16, 8])
    member = m["weights"][name]["member"]
    import io
    for arr in (np.zeros((8, 16), np.float32), np.zeros((16, 8), np.float64)):
        buf = io.BytesIO()
        np.save(buf, arr)
        m2 = json.loads(json.dumps(m))
        m2["weights"][name]["shape"] = list(arr.shape)
        m2["weights"][name]["dtype"] = arr.dtype.name
        p = _rewrite(path, tmp_path / "x.jlite", replace={member: buf.getvalue(), "manifest.json": json.dumps(m2)},)
        with pytest.raises(jaxlite.ModelFormatError, match=f"weight '{name}'.*IR expects float32\\[16, 8\\]"):
            jaxlite.load(p)


def test_weight_missing_from_table(saved, tmp_path):
    _, _, path = saved
    m = _manifest(path)
    name = next(iter(m["weights"]))
    del m["weights"][name]
    p = _rewrite(path, tmp_path / "x.jlite", replace={"manifest.json": json.dumps(m)})
    with pytest.raises(jaxlite.ModelFormatError, match=f"uses weight '{name}', which the file does not hold"):
        jaxlite.load(p)


def test_object_arrays_are_refused(saved, tmp_path):
    _, _, path = saved
    import io
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    p = _rewrite(path, tmp_path / "x.jlite", replace={"weights/0.npy": buf.getvalue()})
    with pytest.raises(jaxlite.ModelFormatError, match="Python objects|size does not match"):
        jaxlite.load(p)


def test_member_paths_escaping_the_archive(saved, tmp_path):
    _, _, path = saved
    for evil in ("../evil.npy", "/etc/passwd", "weights/../../x"):
        p = _rewrite(path, tmp_path / "x.jlite", extra={evil: b"x"})
        with pytest.raises(jaxlite.ModelFormatError, match="escapes the archive"):
            jaxlite.load(p)


def test_absurd_member_sizes(saved, tmp_path, monkeypatch):
    _, _, path = saved
    monkeypatch.setattr(fileformat, "MAX_TEXT_MEMBER", 100)
    with pytest.raises(jaxlite.ModelFormatError, match="absurd size"):
        jaxlite.load(path)


def test_forged_sizes_in_central_directory(saved, tmp_path):
    _, _, path = saved
    data = bytearray(path.read_bytes())
    # corrupt the first central-directory entry's compressed and uncompressed sizes
    cd = data.rfind(b"PK\x01\x02", 0, len(data))
    first_cd = data.find(b"PK\x01\x02")
    assert 0 < first_cd <= cd
    data[first_cd + 20:first_cd + 28] = (0x7FFFFFFF).to_bytes(4, "little") * 2
    p = tmp_path / "forged.jlite"
    p.write_bytes(bytes(data))
    with pytest.raises(jaxlite.ModelFormatError):
        jaxlite.load(p)


@pytest.mark.parametrize("mode", ["float32", "int8-weights", "dynamic", "int8"])
def test_version_1_files_still_load_and_compute_the_same(mode, tmp_path):
    """Files written by format version 1 (jaxlite before typed properties: tests/data/v1_*,
    a conv-ReLU, LayerNorm, GELU and dense model) load, run to the outputs the writing
    version computed (on another CPU: to float rounding), and save again as the current
    version. (``dynamic`` files within
    quantization noise of them: the runtime quantizes dynamic-range activations
    asymmetrically since; the files hold only the weights and their scales.)"""
    data = Path(__file__).parent / "data"
    expected = np.load(data / "v1_expected.npz")
    model = jaxlite.load(data / f"v1_{mode}.jlite")
    out = np.asarray(model.compile(native_gemm=False)(expected["x"]))
    want = expected[mode.replace("-", "_")]
    if mode == "dynamic":
        assert np.linalg.norm(out - want) <= 0.02 * np.linalg.norm(want)
        assert np.linalg.norm(out - expected["float32"]) < np.linalg.norm(want - expected["float32"])
    else:  # to float rounding: XLA's float kernels differ by CPU (AVX2 vs AVX-512: ~1e-7)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    assert "#jfuse<activation gelu_tanh>" in model.ir() and "#builtin.int" not in model.ir()
    model.save(tmp_path / "again.jlite")
    with zipfile.ZipFile(tmp_path / "again.jlite") as zf:
        assert json.loads(zf.read("manifest.json"))["format_version"] == fileformat.FORMAT_VERSION
    np.testing.assert_array_equal(np.asarray(jaxlite.load(tmp_path / "again.jlite").compile(native_gemm=False)(
        expected["x"])), out)
