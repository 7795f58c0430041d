"""The structure docs/ARCHITECTURE.md describes: layers that import one way, kernels built
at install and chosen by target, `jaxlite doctor`."""

import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlite
from jaxlite import cli
from jaxlite.dialects.fused import Activation
from jaxlite.examples import digits_mlp
from jaxlite.runtime import (
    available_targets,
    cpu,
    native_calls,
    onednn_calls,
    onednn_kernels,
    target_status,
)

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("compiler", "dialects", "passes", "runtime")


def test_import_contracts_hold():
    """pyproject's import-linter contracts: jaxlite > compiler > passes | runtime >
    dialects, errors and version as leaves, no cycles (also run by .ci/run)."""
    from importlinter.cli import lint_imports

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert lint_imports(no_cache=True) == 0
    finally:
        os.chdir(cwd)


def test_every_layer_is_seen_with_its_modules():
    """The contract is only as good as the graph: each layer must be found with the modules
    it has on disk (a layer missing from the graph would pass any contract)."""
    import grimp

    graph = grimp.build_graph("jaxlite", cache_dir=None)
    for layer in LAYERS:
        on_disk = {p.stem for p in (ROOT / layer).glob("*.py") if p.stem != "__init__"}
        seen = {m.rsplit(".", 1)[-1] for m in graph.find_children(f"jaxlite.{layer}")}
        assert len(on_disk) >= 4 and on_disk <= seen, f"{layer}: {sorted(on_disk - seen)} not in the graph"


def test_no_ambient_state_in_passes():
    """Passes receive the weights and calibration as fields (ModelPass.bind), never through
    context variables."""
    for path in (ROOT / "passes").glob("*.py"):
        assert not re.search(r"\bcontextvars?\b|ContextVar", path.read_text()), path.name


def test_native_kernels_come_from_the_installed_build():
    """Built when the package was installed: loading them compiles nothing and writes no cache."""
    if native_calls.unavailable() is not None:
        pytest.skip(native_calls.unavailable())
    assert native_calls.library().path.parent == Path(native_calls.__file__).parent
    assert {k.target for k in native_calls.library().kernels.values()} >= {
        "jaxlite_quantized_gemm", "jaxlite_dynamic_gemm", "jaxlite_layer_norm"}
    gemm = native_calls.kernel("QuantizedGemm")
    assert gemm.inputs[:3] == ("s8", "s8", "s32") and gemm.attributes == (("activation", "i32"),)
    assert native_calls.kernel("DynamicActGemm").attributes == (("sizes", "i64s"), ("strides", "i64s"))
    assert list(native_calls.library().activations) == [a.value for a in Activation]  # C++ and the dialect agree
    with pytest.raises(TypeError, match="operand 0 must be int8, got float32"):
        native_calls.quantized_gemm(np.zeros((2, 4), np.float32), *native_calls.pack(np.zeros((4, 3), np.int8)), 3,
                                    np.ones(3, np.float32))


def test_targets_are_listed_specific_first_and_xla_last():
    names = available_targets()
    assert names[-1] == "xla" and "xla-float16" in names
    statuses = dict((t.name, why) for t, why in target_status())
    assert statuses["xla"] is None and set(names) == {n for n, why in statuses.items() if why is None}
    if native_calls.unavailable() is None:  # one build of the native kernels serves this CPU, first
        first = [n for n in names if n != "cpu-onednn-int8"][0]  # (preferred where AMX has it)
        assert first == native_calls.target() and sum(t in names for t in native_calls.VARIANTS) == 1
    if "cpu-onednn-int8" in names:
        assert names[0] == "cpu-onednn-int8"


def test_capping_the_cpu_features_selects_the_narrower_builds(monkeypatch):
    """JAXLITE_CPU_FEATURES tests the other paths on a machine that has more: capped to
    AVX2 the AVX2 build serves (the same products), capped below it compile() runs XLA's."""
    fn, args = digits_mlp.factory(8)
    model = jaxlite.convert(fn, *args, quantize="dynamic")
    native = model.compile()
    monkeypatch.setenv("JAXLITE_CPU_FEATURES", "avx2,fma")
    assert "cpu-avx512vnni" not in available_targets()
    if cpu.detected_features() >= native_calls.VARIANTS["cpu-avx512vnni"][1]:
        assert "JAXLITE_CPU_FEATURES excludes" in native_calls.variant_unavailable("cpu-avx512vnni")
    if native_calls.target() == "cpu-avx2":
        avx2 = model.compile()
        assert avx2.targets[0] == "cpu-avx2" and avx2.direct
        np.testing.assert_array_equal(np.asarray(avx2(*args)), np.asarray(native(*args)))
    monkeypatch.setenv("JAXLITE_CPU_FEATURES", "fma")
    assert native_calls.target() is None and "avx2" in native_calls.unavailable()
    portable = model.compile()
    assert not set(native_calls.VARIANTS) & set(portable.targets) and portable.targets[-1] == "xla"
    assert not portable.direct
    np.testing.assert_allclose(np.asarray(portable(*args)), np.asarray(native(*args)), rtol=2e-5, atol=2e-5)


def test_compile_takes_an_explicit_target_order():
    fn, args = digits_mlp.factory(8)
    model = jaxlite.convert(fn, *args, quantize="dynamic")
    exe = model.compile(targets=["xla"])
    assert exe.targets == ("xla",) and exe.targets == model.compile(native_gemm=False).targets
    np.testing.assert_allclose(np.asarray(exe(*args)), np.asarray(jax.jit(fn)(*args)), rtol=0.05, atol=0.05)
    with pytest.raises(jaxlite.DeviceError, match="unknown target 'cpu-sse'"):
        model.compile(targets=["cpu-sse"])
    with pytest.raises(jaxlite.DeviceError, match="either targets= or native_gemm="):
        model.compile(targets=["xla"], native_gemm=False)
    assert model.compile(targets=["xla-float16", "xla"]).float16_compute
    idle = next(t for t in native_calls.VARIANTS if native_calls.variant_unavailable(t) is not None)
    with pytest.raises(jaxlite.DeviceError, match="not available here"):
        model.compile(targets=[idle])


def test_doctor_names_the_cpu_and_every_target(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert cpu.model_name() in out and "target xla " in out and "available" in out
    for target, why in target_status():
        assert f"target {target.name}" in out
        if why is not None:
            assert f"unavailable: {why}" in out
    assert "compile() on cpu" in out
    if onednn_calls.unavailable() is None:  # oneDNN's implementations, bfloat16 ones or why none
        assert "oneDNN float32 kernels  " in out and "oneDNN bfloat16 kernels " in out
        bf16_row = next(line for line in out.splitlines() if line.startswith("oneDNN bfloat16 kernels"))
        assert bf16_row.endswith("(no AVX512-BF16 or AMX-BF16 here)") != onednn_kernels.computes_bfloat16()


def test_weights_returned_or_yielded_as_they_are_are_placed():
    """A weight no kernel reads but the program returns (or a branch yields) is still placed."""
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((80, 4)).astype(np.float32))
    w2 = jnp.asarray(rng.standard_normal((80, 4)).astype(np.float32))
    x = rng.standard_normal((80, 4)).astype(np.float32)

    def returns_weight(x):
        return x * 2, w

    def branch_yields_weights(x):
        return jax.lax.cond(x.sum() > 0, lambda: w, lambda: w2) + x

    for fn in (returns_weight, branch_yields_weights):
        for quantize in (None, "dynamic"):
            exe = jaxlite.convert(fn, x, quantize=quantize).compile()
            out, ref = jax.tree_util.tree_leaves(exe(x)), jax.tree_util.tree_leaves(jax.jit(fn)(x))
            for o, r in zip(out, ref, strict=True):
                np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-6)
