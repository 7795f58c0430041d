"""Beyond one device: the program over a mesh of (forced) CPU devices, data- and
tensor-parallel, and over two processes with jax.distributed. jax reads the device count
when it starts, so each check runs in a fresh subprocess."""

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxlite
from jaxlite.errors import DeviceError

ROOT = Path(__file__).resolve().parent.parent

MESH_CHECKS = textwrap.dedent("""
    import json, os, sys, warnings
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np, jaxlite
    from jax.sharding import PartitionSpec as P
    from jaxlite.examples import digits_cnn, transformer
    results = {}
    cases = {
        "cnn": (digits_cnn.factory(16), {"params.Conv_*.kernel*": P(None, None, None, "model")}, ("int8",)),
        "transformer": (transformer.factory(num_layers=1, d_model=32, heads=2, seq=8, batch=8),
                        {"*query.kernel*": P(None, None, "model"), "*Dense_0.kernel*": P(None, "model")},
                        (None, "dynamic")),
    }
    for name, ((fn, (x,)), specs, modes) in cases.items():
        x = np.asarray(x)
        for mode in modes:
            model = jaxlite.convert(fn, x, quantize=mode, calibration=[(x,)] if mode == "int8" else None)
            one = np.asarray(model.compile(targets=["xla"])(x))
            native = np.asarray(model.compile()(x))
            dp = model.compile(mesh=jax.make_mesh((8,), ("data",)), batch_axis="data")
            out = dp(x)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tp = model.compile(mesh=jax.make_mesh((2, 4), ("data", "model")), batch_axis="data",
                                   weight_sharding=specs)
            out_tp = tp(x)
            scale = float(np.max(np.abs(one)))
            split = sorted({str(a.sharding.spec) for a in tp._weights.values()})
            results[f"{name} {mode}"] = {
                "dp": float(np.max(np.abs(np.asarray(out) - one))) / scale,
                "dp_native": float(np.max(np.abs(np.asarray(out) - native))) / scale,
                "tp": float(np.max(np.abs(np.asarray(out_tp) - one))) / scale,
                "out_spec": str(out.sharding.spec), "devices": len(out.sharding.device_set),
                "split": split, "warnings": [str(w.message) for w in caught]}
    model = jaxlite.convert(lambda x: x @ np.ones((5, 30), np.float32), np.ones((8, 5), np.float32))
    try:
        model.compile(mesh=jax.make_mesh((8,), ("model",)), weight_sharding={"*": P(None, "model")})
    except jaxlite.DeviceError as e:
        results["split_error"] = str(e)
    print(json.dumps(results))
""")


@pytest.mark.slow
def test_data_and_tensor_parallel_on_eight_cpu_devices():
    """Data-parallel equals one device (float32 within 1e-6 relative, quantized up to float
    rounding); tensor-parallel within 1e-5; a quantized kernel's scales split with it."""
    r = subprocess.run([sys.executable, "-c", MESH_CHECKS], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert f"weight const0 of shape [5, 30] cannot be split as {P(None, 'model')}" in results.pop("split_error")
    for case, res in results.items():
        assert res["dp"] < 1e-6 and res["tp"] < 1e-5, (case, res)
        assert res["dp_native"] < 1e-6, (case, res)  # the default one-device model (native kernels)
        assert res["out_spec"] == str(P("data")) and res["devices"] == 8, (case, res)
        split = {str(P(None, "model")), str(P(None, None, "model")), str(P(None, None, None, "model"))}
        assert split & set(res["split"]), (case, res)
        assert not res["warnings"], (case, res)
    assert str(P("model")) in results["transformer dynamic"]["split"]  # the int8 kernels' scales
    assert str(P("model")) in results["cnn int8"]["split"]


WORKER = textwrap.dedent("""
    import os, sys
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
    import numpy as np, jaxlite
    from jax.experimental import multihost_utils
    w = np.linspace(-1, 1, 64 * 16, dtype=np.float32).reshape(64, 16)
    x = np.linspace(-2, 2, 8 * 64, dtype=np.float32).reshape(8, 64)
    model = jaxlite.convert(lambda x: jax.nn.relu(x @ w), x)
    exe = model.compile(mesh=jax.make_mesh((4,), ("data",)), batch_axis="data")
    y = exe(x)
    assert len(y.sharding.device_set) == 4 and jax.process_count() == 2
    np.save(out, np.asarray(multihost_utils.process_allgather(y, tiled=True)))
""")


@pytest.mark.slow
def test_two_processes_with_jax_distributed(tmp_path):
    """The same compile(mesh=...) after jax.distributed.initialize() in two local processes
    (jax's CPU collectives) gives the one-device result."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), port, str(tmp_path / f"y{i}.npy")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    w = np.linspace(-1, 1, 64 * 16, dtype=np.float32).reshape(64, 16)
    x = np.linspace(-2, 2, 8 * 64, dtype=np.float32).reshape(8, 64)
    one = np.asarray(jaxlite.convert(lambda x: jax.nn.relu(x @ w), x).compile(targets=["xla"])(x))
    for i in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"y{i}.npy"), one, rtol=1e-6, atol=1e-6)


def test_mesh_options_are_checked():
    x = np.ones((4, 3), np.float32)
    model = jaxlite.convert(lambda x: x * 2, x)
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(DeviceError, match="device= or mesh=, not both"):
        model.compile(device="cpu", mesh=mesh)
    with pytest.raises(DeviceError, match="not an axis of the mesh"):
        model.compile(mesh=mesh, batch_axis="batch")
    with pytest.raises(DeviceError, match="need mesh="):
        model.compile(batch_axis="data")
    with pytest.raises(DeviceError, match="PartitionSpec"):
        model.compile(mesh=mesh, weight_sharding={"w": (None, "data")})
    with pytest.raises(DeviceError, match="names 'model', not an axis"):
        model.compile(mesh=mesh, weight_sharding={"w": P(None, "model")})
    with pytest.raises(DeviceError, match="direct=True"):
        model.compile(mesh=mesh, direct=True)
    with pytest.warns(UserWarning, match="matches no weight"):
        exe = model.compile(mesh=mesh, batch_axis="data", weight_sharding={"nothing.*": P("data")})
    np.testing.assert_array_equal(np.asarray(exe(x)), x * 2)


def test_run_on_four_devices_from_the_cli(tmp_path):
    """``jaxlite run --devices 4``: the batch split over four CPU devices, the one-device result."""
    w = np.linspace(-1, 1, 64 * 16, dtype=np.float32).reshape(64, 16)
    x = np.linspace(-2, 2, 8 * 64, dtype=np.float32).reshape(8, 64)
    model = jaxlite.convert(lambda x: jax.nn.relu(x @ w), x, dynamic_batch=True)
    model.save(tmp_path / "m.jlite")
    np.save(tmp_path / "x.npy", x)
    cli = [sys.executable, "-m", "jaxlite", "run", str(tmp_path / "m.jlite"), "--input", str(tmp_path / "x.npy")]
    r = subprocess.run([*cli, "--devices", "4", "--output", str(tmp_path / "y.npy")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.asarray(model.compile(targets=["xla"])(x)),
                               rtol=1e-6, atol=1e-6)
    np.save(tmp_path / "x.npy", x[:7])
    r = subprocess.run([*cli, "--devices", "4"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "an input of shape [7, 64] cannot be split" in r.stderr
