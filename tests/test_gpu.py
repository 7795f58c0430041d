"""The examples on device="gpu" (skipped where jax sees no GPU)."""

import re

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


def full_float32():
    """At the default precision, float32 matmuls on a GPU since Ampere round their inputs to
    TF32 (10-bit mantissa), and jaxlite's program (BatchNorm folded into the conv weights)
    rounds differently from jax.jit's: on an H100, 2 of 640 CNN logits came out 2e-3 apart
    in one run of two. The float comparisons convert and trace both at full float32 precision
    (a converted model keeps the precision it was converted under), where the optimized
    program must agree closely; the quantized tests below use the default."""
    return jax.default_matmul_precision("highest")


@pytest.mark.parametrize("example", [digits_mlp, digits_cnn, transformer])
def test_examples_on_gpu(example):
    fn, args = example.factory()
    with full_float32():
        exe = jaxlite.compile(fn, *args, device="gpu")
        out, ref = exe(*args), jax.jit(fn)(*args)
    assert all(d.platform == "gpu" for d in jax.tree_util.tree_leaves(out)[0].devices())
    assert_tree_close(jax.device_get(out), np.asarray(jax.device_get(ref)), rtol=1e-4, atol=1e-4)


def test_saved_model_runs_on_gpu(tmp_path):
    fn, args = digits_mlp.factory()
    with full_float32():
        jaxlite.convert(fn, *args).save(tmp_path / "m.jlite")
        exe = jaxlite.load(tmp_path / "m.jlite").compile(device="gpu")
        out, ref = exe(*args), jax.jit(fn)(*args)
    assert_tree_close(jax.device_get(out), np.asarray(jax.device_get(ref)), rtol=1e-4, atol=1e-4)


# Compiled HLO names an instruction's operands without their types ("dot(%p0, %p1)"), so
# the types come from the operands' own definitions ("%p0 = s8[64,784]{1,0} parameter(0)").
_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = (\w+)\[", re.M)
_GEMM = re.compile(r"\b(?:dot|custom-call)\(%([\w.\-]+), %([\w.\-]+)")


def _gemm_operand_types(exe) -> set[tuple[str, str]]:
    """Element types of the two operands of every GEMM in the compiled program: XLA's dot
    (also inside Triton fusions) or a cuBLAS custom call."""
    hlo = exe.lower().compile().as_text()
    types = dict(_DEFINITION.findall(hlo))
    return {(types.get(a), types.get(b)) for a, b in _GEMM.findall(hlo)}


def _relative_error(out, ref) -> float:
    out, ref = np.asarray(jax.device_get(out)), np.asarray(jax.device_get(ref))
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def test_float16_computes_in_float16_on_gpu():
    fn, args = transformer.factory()
    exe = jaxlite.convert(fn, *args, quantize="float16").compile(device="gpu")
    assert exe.float16_compute
    assert ("f16", "f16") in _gemm_operand_types(exe)
    assert _relative_error(exe(*args), jax.jit(fn)(*args)) < 5e-3


@pytest.mark.parametrize("mode", ["dynamic", "int8"])
@pytest.mark.parametrize("example", [digits_mlp, digits_cnn, transformer])
def test_int8_modes_use_xlas_int8_gemm_on_gpu(example, mode):
    fn, args = example.factory()
    model = jaxlite.convert(fn, *args, quantize=mode, calibration=[args] if mode == "int8" else None)
    exe = model.compile(device="gpu")
    assert ("s8", "s8") in _gemm_operand_types(exe), "no int8 x int8 GEMM in the compiled GPU program"
    out = exe(*args)
    assert all(d.platform == "gpu" for d in jax.tree_util.tree_leaves(out)[0].devices())
    assert _relative_error(out, jax.jit(fn)(*args)) < 3e-2
    # the same quantized arithmetic as XLA's int8 path on the CPU (integer accumulation is
    # exact; float rescaling may round differently, so a rare activation lands one step off)
    cpu = np.asarray(model.compile(device="cpu", native_gemm=False)(*args))
    gpu = np.asarray(jax.device_get(out))
    assert np.max(np.abs(gpu - cpu)) <= 1e-2 * np.max(np.abs(cpu))


def test_quantized_model_saved_and_loaded_on_gpu_computes_the_same(tmp_path):
    fn, args = digits_cnn.factory()
    model = jaxlite.convert(fn, *args, quantize="dynamic")
    before = np.asarray(jax.device_get(model.compile(device="gpu")(*args)))
    model.save(tmp_path / "m.jlite")
    after = np.asarray(jax.device_get(jaxlite.load(tmp_path / "m.jlite").compile(device="gpu")(*args)))
    np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("m, n", [(64, 16), (4096, 16), (64, 10)])
def test_int8_dot_is_exact_on_gpu_for_every_small_k(m, n):
    """XLA's Triton GEMM returned wrong int8 sums for K = 9 and 10 on an H100 (jaxlib
    0.11.2); int8_dot pads K on CUDA. Every K up to 40 must give numpy's sums."""
    from jaxlite.runtime.xla_int8 import int8_dot

    rng = np.random.default_rng(0)
    gpu = jax.devices("gpu")[0]
    dot = jax.jit(lambda a, b: int8_dot(a, b, (((1,), (0,)), ((), ()))))
    wrong = []
    for k in range(1, 41):
        a = rng.integers(-127, 128, (m, k)).astype(np.int8)
        b = rng.integers(-127, 128, (k, n)).astype(np.int8)
        if not np.array_equal(np.asarray(dot(jax.device_put(a, gpu), jax.device_put(b, gpu))), a.astype(np.int64) @ b.astype(np.int64)):
            wrong.append(k)
    assert not wrong, f"wrong int8 sums for K = {wrong}"
