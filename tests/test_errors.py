"""Every error a user can cause gets a clear message."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlite


def test_unsupported_primitive_names_primitive_and_source_line():
    def fn(x):
        return jax.pure_callback(lambda a: a, jax.ShapeDtypeStruct(x.shape, x.dtype), x)  # line marker

    with pytest.raises(jaxlite.UnsupportedPrimitiveError) as info:
        jaxlite.convert(fn, np.ones(3, np.float32))
    msg = str(info.value)
    assert "pure_callback" in msg
    assert "test_errors.py:" in msg
    assert info.value.primitive == "pure_callback"


def test_unsupported_dtype_is_reported():
    with pytest.raises(jaxlite.UnsupportedPrimitiveError, match="complex"):
        jaxlite.convert(lambda x: (x * 1j).real, np.ones(3, np.float32))


def test_non_callable_and_bad_example_args():
    with pytest.raises(jaxlite.ConversionError, match="needs a function"):
        jaxlite.convert(42, np.ones(3))
    with pytest.raises(jaxlite.ConversionError, match="args\\[0\\].*str"):
        jaxlite.convert(lambda x: x, "hello")
    with pytest.raises(jaxlite.ConversionError, match="tracing the function failed"):
        jaxlite.convert(lambda x: x @ x, np.ones((2, 3), np.float32))


@pytest.fixture(scope="module")
def exe():
    def fn(batch, scale):
        return batch["x"] * scale + batch["y"].sum()
    return jaxlite.compile(fn, {"x": np.ones((2, 3), np.float32), "y": np.ones(4, np.float32)},
                           np.float32(1))


def test_wrong_shape_names_argument_and_signature(exe):
    with pytest.raises(jaxlite.SignatureError) as info:
        exe({"x": np.ones((3, 3), np.float32), "y": np.ones(4, np.float32)}, np.float32(1))
    msg = str(info.value)
    assert "batch['x']" in msg and "float32[2,3]" in msg and "float32[3,3]" in msg
    assert "expected signature" in msg and "scale: float32[]" in msg


def test_wrong_dtype(exe):
    with pytest.raises(jaxlite.SignatureError, match="batch\\['y'\\].*int32"):
        exe({"x": np.ones((2, 3), np.float32), "y": np.ones(4, np.int32)}, np.float32(1))


def test_wrong_structure_and_count(exe):
    with pytest.raises(jaxlite.SignatureError, match="missing key 'y'"):
        exe({"x": np.ones((2, 3), np.float32)}, np.float32(1))
    with pytest.raises(jaxlite.SignatureError, match="tuple of 2"):
        exe({"x": np.ones((2, 3), np.float32), "y": np.ones(4, np.float32)})
    with pytest.raises(jaxlite.SignatureError, match="not|expected"):
        exe({"x": "text", "y": np.ones(4, np.float32)}, np.float32(1))


def test_unknown_device():
    model = jaxlite.convert(lambda x: x + 1, np.ones(2, np.float32))
    with pytest.raises(jaxlite.DeviceError, match="unknown device"):
        model.compile(device="npu")


def test_gpu_request_without_gpu_is_clear():
    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("this machine has a GPU")
    model = jaxlite.convert(lambda x: jnp.sin(x), np.ones(2, np.float32))
    with pytest.raises(jaxlite.DeviceError, match="no gpu device"):
        model.compile(device="gpu")


def test_ir_after_unknown_pass():
    model = jaxlite.convert(lambda x: x + 1, np.ones(2, np.float32))
    with pytest.raises(KeyError, match="no IR recorded after 'bogus'"):
        model.ir(after="bogus")
    unoptimized = jaxlite.convert(lambda x: x + 1, np.ones(2, np.float32), passes="")
    assert unoptimized.ir(after="trace") == unoptimized.ir()


def test_unknown_pass_lists_the_available_ones():
    with pytest.raises(jaxlite.ConversionError, match="unknown pass 'bogus'; available passes: canonicalize, capture-constants, cse"):
        jaxlite.convert(lambda x: x + 1, np.ones(2, np.float32), passes="canonicalize,bogus")
    with pytest.raises(jaxlite.ConversionError, match="outputs must be"):
        jaxlite.convert(lambda x: x + 1, np.ones(2, np.float32), outputs=3.5)
