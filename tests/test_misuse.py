"""What users get wrong -- options, calibration data, inputs, files on disk: a clear jaxlite
error (or warning) every time, never a silently wrong model."""

import os
import stat
import subprocess
import sys
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import jaxlite
from jaxlite import cli
from jaxlite.compiler import fileformat
from jaxlite.examples import digits_mlp


@pytest.fixture(scope="module")
def mlp():
    fn, args = digits_mlp.factory(8)
    return fn, args, np.asarray(args[0])


# --- outputs= ----------------------------------------------------------------------------

def test_outputs_zero_on_a_single_array_keeps_all_of_it():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    model = jaxlite.convert(lambda x: x * 2, x, outputs=0)
    np.testing.assert_array_equal(np.asarray(model.compile()(x)), x * 2)  # not row 0
    for bad, message in [(1, "single ArrayImpl|single .*which only outputs=0"), (-1, "only outputs=0")]:
        with pytest.raises(jaxlite.ConversionError, match=message):
            jaxlite.convert(lambda x: x * 2, x, outputs=bad)


def test_outputs_out_of_range_or_unknown_key():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(jaxlite.ConversionError, match="returns 2 outputs \\(indices 0 to 1\\)"):
        jaxlite.convert(lambda x: (x, x + 1), x, outputs=5)
    with pytest.raises(jaxlite.ConversionError, match="no such key; the function returns keys 'a', 'b'"):
        jaxlite.convert(lambda x: {"a": x, "b": x + 1}, x, outputs="c")
    with pytest.raises(jaxlite.ConversionError, match="returns 2 outputs"):
        jaxlite.convert(lambda x: (x, x + 1), x, outputs=[0, 2])
    both = jaxlite.convert(lambda x: {"a": x, "b": x + 1}, x, outputs=["b", "a"])
    out = both.compile()(x)
    np.testing.assert_array_equal(np.asarray(out[0]), x + 1)


# --- skip= -------------------------------------------------------------------------------

def test_skip_as_one_string_is_one_pattern(mlp):
    fn, args, _ = mlp
    model = jaxlite.convert(fn, *args, quantize="dynamic", skip="params.Dense_2*")
    kinds = [op.name for op in model.module.walk()]
    assert kinds.count("jquant.dynamic_dot") == 2 and kinds.count("jfuse.dot") == 1


def test_a_skip_pattern_that_matches_nothing_is_reported(mlp):
    fn, args, _ = mlp
    with pytest.warns(UserWarning, match="skip pattern 'params.Dense_9\\*' matches no weight or op name"):
        jaxlite.convert(fn, *args, quantize="dynamic", skip=["params.Dense_0*", "params.Dense_9*"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxlite.convert(fn, *args, quantize="dynamic", skip=["params.Dense_0*"])
    with pytest.raises(jaxlite.ConversionError, match="skip must be a pattern"):
        jaxlite.convert(fn, *args, quantize="dynamic", skip=[3])


# --- calibration data --------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda x: np.zeros_like(x), "input x is all zeros in every batch"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), "input x holds NaN or Inf"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, -np.inf, x), "input x holds NaN or Inf"),
    (lambda x: x.astype(np.float64), "input x is float64\\[8, 64\\], the model takes float32\\[8,64\\]"),
    (lambda x: x.astype(np.int32), "input x is int32"),
])
def test_degenerate_calibration_data_is_an_error_naming_the_input(mlp, make, message):
    fn, args, x = mlp
    batches = [(make(x),)] if "all zeros" in message else [(x,), (make(x),)]  # zeros: in every batch
    with pytest.raises(jaxlite.ConversionError, match=message):
        jaxlite.convert(fn, *args, quantize="int8", calibration=batches)


def test_an_extreme_calibration_range_warns_with_the_input_and_the_layers(mlp):
    fn, args, x = mlp
    spiked = x.copy()
    spiked[0, 0] = 1e30
    with pytest.warns(UserWarning, match="inputs range up to x: 1e\\+30; .*params.Dense_0.kernel"):
        jaxlite.convert(fn, *args, quantize="int8", calibration=[(x,), (spiked,)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxlite.convert(fn, *args, quantize="int8", calibration=[(x,)])


# --- calling a compiled model --------------------------------------------------------------

@pytest.mark.parametrize("bad", [lambda x: [x], lambda x: None, lambda x: (x,), lambda x: {"x": x},
                                 lambda x: x.tolist()])
@pytest.mark.parametrize("quantize", [None, "dynamic"])
def test_containers_instead_of_arrays_are_signature_errors(mlp, bad, quantize):
    fn, args, x = mlp
    exe = jaxlite.convert(fn, *args, quantize=quantize).compile()
    with pytest.raises(jaxlite.SignatureError, match="args\\[0\\]: expected an array"):
        exe(bad(x))


# --- .npz inputs on the command line -----------------------------------------------------

def _dict_model(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(3, 2)

    def fn(inp):
        return inp["u"] @ w - inp["v"]

    example = {"u": np.ones((2, 3), np.float32), "v": np.zeros((2, 2), np.float32)}
    path = tmp_path / "dict.jlite"
    jaxlite.convert(fn, example).save(path)
    return path, fn


def test_npz_inputs_match_by_name_not_position(tmp_path, capsys):
    path, fn = _dict_model(tmp_path)
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 2)).astype(np.float32)
    expected = fn({"u": u, "v": v})
    for saved in ({"v": v, "u": u}, {"inp['v']": v, "inp['u']": u}):  # names in the other order
        np.savez(tmp_path / "in.npz", **saved)
        assert cli.main(["run", str(path), "--input", str(tmp_path / "in.npz"), "--output",
                         str(tmp_path / "out.npy")]) == 0
        np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-6)
    np.savez(tmp_path / "pos.npz", u, v)  # unnamed: in input order
    assert cli.main(["run", str(path), "--input", str(tmp_path / "pos.npz"), "--output", str(tmp_path / "o.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), expected, rtol=1e-6)
    capsys.readouterr()
    np.savez(tmp_path / "bad.npz", a=u, b=v)  # names that are no input's
    assert cli.main(["run", str(path), "--input", str(tmp_path / "bad.npz")]) == 1
    err = capsys.readouterr().err
    assert "no array named for input inp['u']" in err and err.count("\n") == 1


def test_object_arrays_in_an_npz_are_refused(tmp_path, capsys):
    path, _ = _dict_model(tmp_path)
    np.savez(tmp_path / "obj.npz", u=np.array([1, "a"], dtype=object), v=np.zeros((2, 2), np.float32))
    assert cli.main(["run", str(path), "--input", str(tmp_path / "obj.npz")]) == 1
    assert "holds Python objects" in capsys.readouterr().err


def test_report_on_two_unrelated_models_is_one_line(tmp_path, mlp):
    fn, args, x = mlp
    jaxlite.convert(fn, *args).save(tmp_path / "mlp.jlite")
    other = jaxlite.convert(lambda x: jnp.tanh(x[:, :10]), np.ones((8, 32), np.float32), quantize="dynamic")
    other.save(tmp_path / "other.jlite")
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([sys.executable, "-m", "jaxlite", "report", str(tmp_path / "mlp.jlite"),
                        str(tmp_path / "other.jlite"), "--data", str(tmp_path / "x.npy")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "not the same model quantized" in r.stderr


# --- saving ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_model():
    w = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    return jaxlite.convert(lambda x: x @ w, np.ones((2, 4), np.float32))


def test_save_errors_name_the_target(tmp_path, small_model):
    with pytest.raises(jaxlite.SaveError, match=f"cannot save {tmp_path}/missing/m.jlite: No such file"):
        small_model.save(tmp_path / "missing" / "m.jlite")


def test_save_writes_through_a_symlink_and_keeps_permissions(tmp_path, small_model):
    real = tmp_path / "real.jlite"
    small_model.save(real)
    os.chmod(real, 0o600)
    link = tmp_path / "link.jlite"
    link.symlink_to(real)
    small_model.save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert jaxlite.load(link).ir() == small_model.ir()


def test_save_removes_temporaries_of_killed_saves_only(tmp_path, small_model):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".m.jlite.{dead}.abc123.tmp"
    alive = tmp_path / f".m.jlite.{os.getppid()}.def456.tmp"  # a process that exists: maybe saving now
    stale.write_bytes(b"half a model")
    alive.write_bytes(b"being written")
    small_model.save(tmp_path / "m.jlite")
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.jlite", alive.name])


def test_save_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, small_model, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(fileformat.os, "fsync", fsync)
    monkeypatch.setattr(fileformat.os, "replace", replace)
    small_model.save(tmp_path / "m.jlite")
    assert calls == [("fsync", "file"), ("replace", "m.jlite"), ("fsync", "dir")]
