import jax
import numpy as np
import pytest

import jaxlite
from jaxlite.dialects.module import parse_module, print_module


def assert_tree_close(out, ref, rtol=1e-5, atol=1e-6):
    out_leaves, out_tree = jax.tree_util.tree_flatten(out)
    ref_leaves, ref_tree = jax.tree_util.tree_flatten(ref)
    assert out_tree == ref_tree, f"structure {out_tree} != {ref_tree}"
    for o, r in zip(out_leaves, ref_leaves, strict=True):
        o, r = np.asarray(o), np.asarray(r)
        assert o.shape == r.shape and o.dtype == r.dtype, f"{o.dtype}{o.shape} != {r.dtype}{r.shape}"
        if o.dtype.kind in "biu":
            np.testing.assert_array_equal(o, r)
        else:
            np.testing.assert_allclose(o, r, rtol=rtol, atol=atol, equal_nan=True)


def check_against_jax(fn, *args, rtol=1e-5, atol=1e-6, roundtrip=True):
    """Convert fn, run it, compare with jax.jit(fn); also print -> parse -> print the IR."""
    model = jaxlite.convert(fn, *args)
    out = model.compile()(*args)
    ref = jax.jit(fn)(*args)
    assert_tree_close(out, ref, rtol, atol)
    if roundtrip:
        text = model.ir()
        assert print_module(parse_module(text)) == text
    return model


@pytest.fixture
def rng():
    return np.random.default_rng(0)
