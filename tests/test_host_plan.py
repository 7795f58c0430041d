"""runtime/host_plan.py: small all-native programs run without XLA -- the same kernels, the
same results, numpy arrays out; everything else stays on the jitted path."""

import ctypes
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlite
from jaxlite.runtime import available_targets, cpu_kernels, host_plan
from jaxlite.runtime import native_calls as native

pytestmark = pytest.mark.skipif(not native.available(), reason="needs jaxlite's native CPU kernels (AVX2 or AVX-512 VNNI)")


def _mlp(rng, sizes=(64, 96, 48, 10)):
    params = [(rng.normal(size=(a, b)).astype(np.float32) / np.sqrt(a), rng.normal(size=(b,)).astype(np.float32) * 0.1)
              for a, b in zip(sizes, sizes[1:], strict=False)]

    def fn(x):
        for i, (w, b) in enumerate(params):
            x = x @ w + b
            if i < len(params) - 1:
                x = jax.nn.relu(x)
        return x
    return fn


def _cnn(rng):
    k1 = rng.normal(size=(3, 3, 1, 8)).astype(np.float32) / 3
    k2 = rng.normal(size=(3, 3, 8, 16)).astype(np.float32) / 8
    w = rng.normal(size=(4 * 4 * 16, 10)).astype(np.float32) / 16
    dn = ("NHWC", "HWIO", "NHWC")

    def fn(x):
        y = jax.nn.relu(jax.lax.conv_general_dilated(x, k1, (1, 1), "SAME", dimension_numbers=dn))
        y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        y = jax.nn.relu(jax.lax.conv_general_dilated(y, k2, (1, 1), "SAME", dimension_numbers=dn))
        return y.reshape(y.shape[0], -1) @ w
    return fn


def _convert(fn, x, mode, rng):
    calibration = [(rng.normal(size=x.shape).astype(np.float32),) for _ in range(4)] if mode == "int8" else None
    return jaxlite.convert(fn, x, quantize=mode, calibration=calibration)


@pytest.mark.parametrize("mode", ["dynamic", "int8"])
@pytest.mark.parametrize("make, shape", [(_mlp, (32, 64)), (_cnn, (8, 8, 8, 1))], ids=["mlp", "cnn"])
def test_direct_runs_exactly_what_xla_runs(rng, make, shape, mode):
    fn = make(rng)
    x = rng.normal(size=shape).astype(np.float32)
    model = _convert(fn, x, mode, rng)
    direct, jitted = model.compile(), model.compile(direct=False)
    assert direct.direct and not jitted.direct
    out = direct(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == jitted(x).shape
    np.testing.assert_array_equal(out, np.asarray(jitted(x)))  # the same kernels, bit for bit
    ref = np.asarray(jax.jit(fn)(x))
    assert np.linalg.norm(out - ref) <= 0.05 * np.linalg.norm(ref)
    # jax arrays in, and a second input: nothing of the first call is left over
    x2 = rng.normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(direct(jnp.asarray(x2)), np.asarray(jitted(x2)))


def test_outputs_are_fresh_arrays(rng):
    fn = _mlp(rng)
    x = rng.normal(size=(4, 64)).astype(np.float32)
    exe = jaxlite.compile(fn, x, quantize="dynamic")
    first = exe(x)
    expected = first.copy()
    first[:] = 0
    np.testing.assert_array_equal(exe(x), expected)
    assert exe(x) is not exe(x)


def test_pytree_inputs_and_outputs(rng):
    w = rng.normal(size=(16, 8)).astype(np.float32)

    def fn(inputs):
        return {"y": jax.nn.relu(inputs["a"] @ w), "z": inputs["b"] @ w}

    args = {"a": rng.normal(size=(4, 16)).astype(np.float32), "b": rng.normal(size=(4, 16)).astype(np.float32)}
    model = jaxlite.convert(fn, args, quantize="dynamic")
    direct, jitted = model.compile(), model.compile(direct=False)
    assert direct.direct
    out, ref = direct(args), jitted(args)
    assert set(out) == {"y", "z"}
    for key in out:
        np.testing.assert_array_equal(out[key], np.asarray(ref[key]))


def test_other_inputs_take_the_jitted_path_and_its_errors(rng):
    fn = _mlp(rng)
    x = rng.normal(size=(4, 64)).astype(np.float32)
    exe = jaxlite.compile(fn, x, quantize="dynamic")
    assert exe.direct
    # float64 is not the signature's dtype: jax.jit's own conversion (x64 off) applies
    np.testing.assert_array_equal(np.asarray(exe(x.astype(np.float64))), exe(x))
    with pytest.raises(jaxlite.SignatureError, match="expected float32"):
        exe(x[:2])
    with pytest.raises(jaxlite.SignatureError):
        exe(x, x)


def test_a_direct_executable_composes_with_jax_transformations(rng):
    """Under jit or vmap the inputs are tracers: the jitted program is traced instead."""
    fn = _mlp(rng)
    x = rng.normal(size=(4, 64)).astype(np.float32)
    exe = jaxlite.compile(fn, x, quantize="dynamic")
    assert exe.direct
    np.testing.assert_allclose(np.asarray(jax.jit(lambda v: exe(v) * 2)(x)), exe(x) * 2, rtol=1e-6)
    batched = jax.vmap(exe)(np.stack([x, x]))
    assert batched.shape == (2, *exe(x).shape)
    np.testing.assert_array_equal(np.asarray(batched[1]), exe(x))  # the kernels once per element


def test_concurrent_calls_get_their_own_results(rng):
    fn = _mlp(rng)
    xs = [rng.normal(size=(8, 64)).astype(np.float32) for _ in range(4)]
    exe = jaxlite.compile(fn, xs[0], quantize="int8", calibration=[(x,) for x in xs])
    assert _threads_get_their_own_results(exe, xs, calls=50) == []


def _threads_get_their_own_results(exe, xs, calls: int) -> list[int]:
    """One thread per input calling ``exe`` ``calls`` times: the threads whose results
    differed from the input's single-threaded one."""
    expected = [exe(x) for x in xs]
    failures = []

    def worker(i):
        for _ in range(calls):
            if not np.array_equal(exe(xs[i]), expected[i]):
                failures.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def test_exact_arrays_take_one_c_call_and_others_the_python_path(rng):
    """C-contiguous numpy inputs of the signature's shapes and dtypes run in one C call
    (native/direct_call.c); anything else (here: Fortran order) takes the Python path. Both
    give the same outputs, also with threads mixing them on one plan."""
    fn = _mlp(rng)
    xs = [rng.normal(size=(8, 64)).astype(np.float32) for _ in range(4)]
    exe = jaxlite.compile(fn, xs[0], quantize="dynamic")
    plan = exe._direct
    if plan._fast is None:
        pytest.skip("installed without the native build")
    fast = plan.call_arrays((xs[0],))
    assert fast is not None and np.array_equal(fast[0], plan([xs[0]])[0])
    on_cpu = plan.call_arrays((jax.numpy.asarray(xs[0]),))  # jax's CPU arrays export their buffer too
    assert on_cpu is not None and np.array_equal(on_cpu[0], fast[0])
    assert plan.call_arrays((np.asfortranarray(xs[1]),)) is None
    assert plan.call_arrays((xs[1].astype(np.float64),)) is None
    assert plan.call_arrays((xs[1].tolist(),)) is None
    np.testing.assert_array_equal(exe(np.asfortranarray(xs[1])), exe(xs[1]))
    mixed = [x if i % 2 else np.asfortranarray(x) for i, x in enumerate(xs)]
    assert _threads_get_their_own_results(exe, mixed, calls=100) == []


def test_inputs_beyond_the_c_calls_limits_take_the_python_path():
    """direct_call.c holds at most 8 dims per input: a 10-D input's plan runs in Python."""
    w = np.ones((4, 3), np.float32)
    x = np.ones((1,) * 8 + (2, 4), np.float32)
    exe = jaxlite.compile(lambda v: v @ jnp.asarray(w), x, quantize="dynamic")
    assert exe.direct and exe._direct._fast is None
    np.testing.assert_allclose(exe(x), np.full((1,) * 8 + (2, 3), 4.0), rtol=1e-2)


def test_what_the_plan_cannot_run_stays_on_xla(rng, monkeypatch):
    fn = _mlp(rng)
    x = rng.normal(size=(4, 64)).astype(np.float32)
    float_model = jaxlite.convert(fn, x)  # float dots are XLA's without the oneDNN target
    assert not float_model.compile(targets=["xla"]).direct
    with pytest.raises(jaxlite.DeviceError, match="direct=True"):
        float_model.compile(direct=True, targets=["xla"])
    assert not jaxlite.convert(fn, x, quantize="dynamic").compile(native_gemm=False).direct
    monkeypatch.setattr(host_plan, "MAX_MACS", 1000)  # big programs keep XLA's threads
    monkeypatch.setattr(host_plan, "usable_cores", lambda: 2)
    assert not jaxlite.convert(fn, x, quantize="dynamic").compile().direct


def test_a_process_on_one_core_runs_bigger_programs_direct(rng, monkeypatch):
    """Pinned to one core XLA's pool has nothing to split over: the limit is
    MAX_MACS_ONE_CORE, and the affinity decides which limit applies."""
    fn = _mlp(rng)
    x = rng.normal(size=(4, 64)).astype(np.float32)
    model = jaxlite.convert(fn, x, quantize="dynamic")
    monkeypatch.setattr(host_plan, "MAX_MACS", 1000)
    monkeypatch.setattr(host_plan, "usable_cores", lambda: 1)
    one_core = model.compile()
    assert one_core.direct
    np.testing.assert_array_equal(one_core(x), model.compile(direct=False)(x))
    monkeypatch.setattr(host_plan, "MAX_MACS_ONE_CORE", 1000)
    assert not model.compile().direct
    monkeypatch.undo()
    assert host_plan.usable_cores() == len(os.sched_getaffinity(0))


def test_programs_with_xla_ops_stay_on_xla(rng):
    """A residual add (two activations) is an XLA op: the whole program stays jitted."""
    w = rng.normal(size=(16, 16)).astype(np.float32) / 4

    def fn(x):
        return jax.nn.relu(x @ w) + x

    x = rng.normal(size=(4, 16)).astype(np.float32)
    exe = jaxlite.compile(fn, x, quantize="dynamic")
    assert host_plan.worth_tracing(exe.model.module.ops.first.body.block) and not exe.direct
    np.testing.assert_allclose(np.asarray(exe(x)), np.asarray(jax.jit(fn)(x)), rtol=0.05, atol=0.05)


def test_saved_model_runs_direct(rng, tmp_path):
    fn = _mlp(rng)
    x = rng.normal(size=(4, 64)).astype(np.float32)
    model = jaxlite.convert(fn, x, quantize="int8", calibration=[(x,)])
    model.save(tmp_path / "m.jlite")
    loaded = jaxlite.load(tmp_path / "m.jlite").compile()
    assert loaded.direct
    np.testing.assert_array_equal(loaded(x), model.compile()(x))


def test_a_kernel_error_raises():
    """A kernel's own check (here: operands of the wrong dtypes) surfaces as an exception."""
    x = np.zeros((2, 8), np.float32)
    plan = host_plan.HostPlan(jax.make_jaxpr(native.quantize_rows)(x), {})
    q, scale, zero = plan([x])
    np.testing.assert_array_equal(scale, np.ones(2, np.float32))  # a zero row has scale 1
    np.testing.assert_array_equal(zero, np.full(2, -128, np.int32))  # ... and its range starts at 0
    np.testing.assert_array_equal(q, np.full((2, 8), -128, np.int8))
    wrong = (ctypes.c_int32 * 4)(11, 11, 11, 4)  # the int8 result declared float32
    plan._program[0].dtypes = ctypes.cast(wrong, ctypes.POINTER(ctypes.c_int32))
    with pytest.raises(RuntimeError, match="operands or attributes do not match the kernel"):
        plan([x])


def test_loops_and_float_layers_are_judged_from_the_ir(rng):
    """A scan (an RNN), or a float layer beside native int8 ones where no native target
    takes float layers: no trace is spent on the direct path, and the program runs jitted.
    With oneDNN's float kernels (or FloatGemm's, which take 8 rows where oneDNN has no
    brgemm kernel) the mixed program is all native and runs direct."""
    w = rng.normal(size=(16, 16)).astype(np.float32) / 4

    def rnn(x):
        h, _ = jax.lax.scan(lambda h, xt: (jnp.tanh(h @ w + xt), None), jnp.zeros_like(x[0]), x)
        return h @ w

    w2, b = rng.normal(size=(16, 8)).astype(np.float32), np.ones(8, np.float32)

    def mixed(x):
        return jnp.tanh(x @ w) @ w2 + b  # the second layer kept float: a jfuse.dot

    x = rng.normal(size=(5, 8, 16)).astype(np.float32)  # 8 rows: more than FloatGemm's batch-1 case
    exe = jaxlite.compile(rnn, x, quantize="dynamic")
    assert not host_plan.worth_tracing(exe.model.module.ops.first.body.block) and not exe.direct
    np.testing.assert_allclose(np.asarray(exe(x)), np.asarray(jax.jit(rnn)(x)), rtol=0.05, atol=0.05)
    partly = jaxlite.convert(mixed, x[0], quantize="dynamic", skip=["w2"])
    kinds = {op.name for op in partly.module.walk()}
    assert {"jquant.dynamic_dot", "jfuse.dot"} <= kinds
    assert host_plan.worth_tracing(partly.module.ops.first.body.block)
    int8_only = [t for t in available_targets() if t != "cpu-onednn"]
    assert partly.compile(targets=int8_only).direct == (
        native.available() and not cpu_kernels.onednn_brgemm_dense(8, 16, 8))
    if {"cpu-onednn", native.target()} <= set(available_targets()):
        exe = partly.compile()
        assert exe.direct
        np.testing.assert_allclose(np.asarray(exe(x[0])), np.asarray(jax.jit(mixed)(x[0])), rtol=0.05, atol=0.05)
