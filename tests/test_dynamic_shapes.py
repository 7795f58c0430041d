"""Dynamic shapes: models converted with symbolic dimensions (jax.export's symbols, or
``dynamic_batch=True``) run at any size, in every quantization mode, also after save/load;
what they compute at a size is what a model converted at that size computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jaxlite
from jaxlite.dialects import dims
from jaxlite.dialects.module import parse_module, print_module
from jaxlite.errors import ConversionError, ModelFormatError, SignatureError
from jaxlite.examples import digits, digits_cnn, digits_mlp, resnet, transformer

MODES = [None, "float16", "bfloat16", "int8-weights", "dynamic", "int8"]
# error bound relative to max |jax.jit output|, per mode (the static models' bounds)
BOUND = {None: 1e-5, "float16": 5e-3, "bfloat16": 2e-2, "int8-weights": 3e-2, "dynamic": 5e-2, "int8": 6e-2}


def _rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("example", ["mlp", "cnn"])
@pytest.mark.parametrize("mode", MODES)
def test_digits_models_at_any_batch_in_every_mode(example, mode, tmp_path):
    """Converted at batch 64 with dynamic_batch=True: batches 1, 3, 64 and 359 (the whole test
    split) match jax.jit after save/load, and the IR at b=64 is the static model's IR."""
    factory = digits_mlp.factory if example == "mlp" else digits_cnn.factory
    fn, (x64,) = factory(64)
    _, _, x_test, _ = digits.load(images=example == "cnn")
    calibration = [(x_test[i:i + 64],) for i in (0, 64)] if mode == "int8" else None
    model = jaxlite.convert(fn, x64, quantize=mode, calibration=calibration, dynamic_batch=True)
    assert model.signature.inputs[0].describe().startswith("float32[b,")
    static = jaxlite.convert(fn, x64, quantize=mode, calibration=calibration)
    assert print_module(dims.specialize(model.module, {"b": 64})) == static.ir()

    model.save(tmp_path / "m.jlite")
    exe = jaxlite.load(tmp_path / "m.jlite").compile()
    for batch in (1, 3, 64, 359):
        x = x_test[:batch]
        out = exe(x)
        assert out.shape == (batch, 10)
        assert _rel_err(out, jax.jit(fn)(x)) < BOUND[mode], (mode, batch)
    assert len(exe.shapes_compiled) == 4


def test_specialized_calls_equal_a_static_model_bit_for_bit():
    """The kernels a shape gets are the static model's: outputs are identical."""
    fn, (x,) = digits_cnn.factory(8)
    dynamic = jaxlite.convert(fn, x, quantize="dynamic", dynamic_batch=True).compile()
    for batch in (1, 8):
        static = jaxlite.convert(fn, x[:batch], quantize="dynamic").compile()
        np.testing.assert_array_equal(np.asarray(dynamic(x[:batch])), np.asarray(static(x[:batch])))


@pytest.mark.parametrize("mode", MODES)
def test_transformer_with_symbolic_batch_and_length(mode, tmp_path):
    fn, (x,) = transformer.factory(num_layers=2, d_model=32, heads=2, seq=8, batch=2)
    spec = jax.ShapeDtypeStruct(export.symbolic_shape("b, t, 32"), jnp.float32)
    rng = np.random.default_rng(0)
    cal = [(rng.standard_normal((b, t, 32)).astype(np.float32),) for b, t in ((2, 8), (1, 5), (3, 12))]
    model = jaxlite.convert(fn, spec, quantize=mode, calibration=cal if mode == "int8" else None)
    assert '["b", "t"]' in model.ir() and repr(model).startswith("<jaxlite.Model (float32[b,t,32]) -> (float32[b,t,32])")
    model.save(tmp_path / "t.jlite")
    exe = jaxlite.load(tmp_path / "t.jlite").compile()
    for b, t in ((1, 4), (3, 8), (2, 16)):
        xs = rng.standard_normal((b, t, 32)).astype(np.float32)
        # int8: ranges calibrated on three random batches of a random transformer
        assert _rel_err(exe(xs), jax.jit(fn)(xs)) < (0.1 if mode == "int8" else BOUND[mode]), (b, t)


@pytest.mark.slow
def test_resnet_at_any_batch_in_every_mode():
    """ResNet-18 (32x32 inputs, 10 classes: its 224x224 form runs in benchmarks/dynamic_shapes.py)."""
    fn, (x,) = resnet.factory(size=32, batch=2, num_classes=10)
    rng = np.random.default_rng(1)
    cal = [(rng.standard_normal((b, 32, 32, 3)).astype(np.float32),) for b in (2, 4)]
    for mode in MODES:
        exe = jaxlite.convert(fn, x, quantize=mode, calibration=cal if mode == "int8" else None,
                              dynamic_batch=True).compile()
        for batch in (1, 3):
            xs = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
            assert _rel_err(exe(xs), jax.jit(fn)(xs)) < BOUND[mode], (mode, batch)


def test_symbolic_expressions_in_parameters_round_trip():
    """reshape sizes, iota and slices that depend on the symbols are kept as #jlax.dim."""
    w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(16, 4)

    def fn(x, y):
        flat = x.reshape(-1, 16) @ w                      # b*t rows
        idx = jnp.arange(2 * x.shape[0], dtype=jnp.float32)
        return flat.sum(0) + idx.sum(), y[:, 1:] * 2.0    # y: [b, 5] -> [b, 4]

    b_t = export.symbolic_shape("b, t, 16")
    args = (jax.ShapeDtypeStruct(b_t, jnp.float32),
            jax.ShapeDtypeStruct((b_t[0], 5), jnp.float32))
    model = jaxlite.convert(fn, *args)
    text = model.ir()
    assert '#jlax.dim<"b*t">' in text and '#jlax.dim<"2*b">' in text
    assert print_module(parse_module(text)) == text
    exe = model.compile()
    rng = np.random.default_rng(0)
    for b, t in ((1, 1), (3, 7)):
        xs = rng.standard_normal((b, t, 16)).astype(np.float32)
        ys = rng.standard_normal((b, 5)).astype(np.float32)
        out, ref = exe(xs, ys), jax.jit(fn)(xs, ys)
        for o, r in zip(out, ref, strict=True):
            np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-5, atol=1e-5)


def test_call_errors_name_the_dimension():
    def fn(x, y):
        return x + y.sum()

    b = export.symbolic_shape("b")[0]
    model = jaxlite.convert(fn, jax.ShapeDtypeStruct((b, 4), jnp.float32), jax.ShapeDtypeStruct((2 * b,), jnp.float32))
    exe = model.compile()
    np.testing.assert_allclose(exe(np.ones((3, 4), np.float32), np.ones(6, np.float32)), np.full((3, 4), 7.0))
    with pytest.raises(SignatureError, match=r"argument y dimension 0 must be 2\*b = 6 with b=3 \(from argument x dimension 0\), got 5"):
        exe(np.ones((3, 4), np.float32), np.ones(5, np.float32))
    with pytest.raises(SignatureError, match=r"argument x: expected float32\[b,4\], got rank 1"):
        exe(np.ones(4, np.float32), np.ones(2, np.float32))
    with pytest.raises(SignatureError, match=r"argument x dimension 1"):  # a static dimension
        exe(np.ones((3, 5), np.float32), np.ones(6, np.float32))
    with pytest.raises(SignatureError, match=r"float32"):  # the dtype, checked at the shape
        exe(np.ones((3, 4), np.int32), np.ones(6, np.float32))
    even = jaxlite.convert(lambda y: y * 2, jax.ShapeDtypeStruct((2 * b,), jnp.float32)).compile()
    assert even(np.ones(4, np.float32)).shape == (4,)
    with pytest.raises(SignatureError, match=r"argument y dimension 0 is 5, but the model's 2\*b cannot be that for any b >= 1"):
        even(np.ones(5, np.float32))


def test_dynamic_batch_shares_one_symbol_and_refuses_mismatched_examples():
    def fn(x, y, s):
        return x * s + y

    model = jaxlite.convert(fn, np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), np.float32(2.0),
                            dynamic_batch=True)
    assert [s.describe() for s in model.signature.inputs] == ["float32[b,3]", "float32[b,3]", "float32[]"]
    exe = model.compile()
    np.testing.assert_allclose(exe(np.ones((5, 3), np.float32), np.ones((5, 3), np.float32), np.float32(3.0)), 4.0)
    with pytest.raises(SignatureError, match=r"argument y dimension 0 must be b = 5"):
        exe(np.ones((5, 3), np.float32), np.ones((4, 3), np.float32), np.float32(3.0))
    with pytest.raises(ConversionError, match="axis-0 sizes differ"):
        jaxlite.convert(fn, np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), np.float32(2.0),
                        dynamic_batch=True)


def test_constraints_on_symbols_are_kept_and_checked(tmp_path):
    """A positional table sliced to the sequence length needs ``t <= 64`` (jax's way); the
    constraint is kept in the IR and the file, and a call that breaks it is refused."""
    table = jnp.asarray(np.linspace(-1, 1, 64 * 8, dtype=np.float32).reshape(64, 8))

    def fn(x):
        return x + table[: x.shape[1]]

    with pytest.raises(ConversionError, match="min"):  # jax cannot slice to t without it
        jaxlite.convert(fn, jax.ShapeDtypeStruct(export.symbolic_shape("b, t, 8"), jnp.float32))
    spec = jax.ShapeDtypeStruct(export.symbolic_shape("b, t, 8", constraints=("t <= 64",)), jnp.float32)
    model = jaxlite.convert(fn, spec)
    assert '["b", "t", ["t <= 64"]]' in model.ir()
    model.save(tmp_path / "c.jlite")
    loaded = jaxlite.load(tmp_path / "c.jlite")
    assert loaded.ir() == model.ir() and loaded.signature.constraints() == ("t <= 64",)
    exe = loaded.compile()
    for t in (1, 64):
        x = np.ones((2, t, 8), np.float32)
        np.testing.assert_array_equal(np.asarray(exe(x)), np.asarray(jax.jit(fn)(x)))
    with pytest.raises(SignatureError, match=r"t=65 \(from argument x dimension 1\) breaks the model's constraint t <= 64"):
        exe(np.ones((2, 65, 8), np.float32))


def test_shape_cache_is_bounded_and_reuses_placed_weights():
    fn, (x,) = digits_mlp.factory(16)
    exe = jaxlite.convert(fn, x, dynamic_batch=True).compile(max_shapes=2, direct=False, embed_weights_bytes=0)
    for batch in (8, 9, 10, 9):
        exe(x[:batch])
    assert exe.shapes_compiled == [((10, 64),), ((9, 64),)]
    first, second = exe.at(x[:9]), exe.at(x[:10])
    shared = set(first._weights) & set(second._weights)
    assert shared and all(first._weights[n] is second._weights[n] for n in shared)
    assert set(exe._placed) == first.array_names | second.array_names  # batch 8's own packings went with it


def test_static_models_are_unchanged():
    fn, (x,) = digits_mlp.factory(8)
    model = jaxlite.convert(fn, x)
    assert not model.signature.symbolic and "?" not in model.ir()
    exe = model.compile()
    assert type(exe).__name__ == "Executable"
    with pytest.raises(SignatureError, match=r"expected float32\[8,64\]"):
        exe(x[:3])


def test_damaged_symbolic_dimensions_in_a_file(tmp_path):
    """A dimension expression that does not parse, or an encoding that does not match the
    '?'s, is the file's fault: ModelFormatError."""
    import zipfile

    fn, (x,) = digits_mlp.factory(4)
    jaxlite.convert(fn, x, dynamic_batch=True).save(tmp_path / "m.jlite")
    for old, new in (('["b"]', '["b +"]'), ('["b"]', '["b", "c"]'), ('["b"]', '[1]'),
                     ('tensor<?x64xf32, ["b"]>', 'tensor<?x64xf32>')):
        with zipfile.ZipFile(tmp_path / "m.jlite") as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        members["model.mlir"] = members["model.mlir"].decode().replace(old, new, 1).encode()
        with zipfile.ZipFile(tmp_path / "bad.jlite", "w") as zf:
            for n, data in members.items():
                zf.writestr(n, data)
        with pytest.raises(ModelFormatError):
            jaxlite.load(tmp_path / "bad.jlite")


BATCH_FUNCTIONS = {
    "mean": lambda x: x.mean(0), "var": lambda x: x.var(0), "times_batch": lambda x: x * x.shape[0],
    "cumsum": lambda x: jnp.cumsum(x, 0), "sort": lambda x: jnp.sort(x, 0), "argsort": lambda x: jnp.argsort(x[:, 0]),
    "pad": lambda x: jnp.pad(x, ((1, 1), (0, 0))), "concat": lambda x: jnp.concatenate([x, x], 0),
    "gather": lambda x: x[jnp.arange(x.shape[0]) % 2], "softmax": lambda x: jax.nn.softmax(x, axis=0),
    "scan": lambda x: jax.lax.scan(lambda c, r: (c + r, c), jnp.zeros(4), x)[1],
    "fori_loop": lambda x: jax.lax.fori_loop(0, x.shape[0], lambda i, c: c + x[i], jnp.zeros(4)),
    "dynamic_slice": lambda x: jax.lax.dynamic_slice_in_dim(x, 1, 1, 0), "last": lambda x: x[-1],
    "flip": lambda x: x[::-1], "half": lambda x: x[: x.shape[0] // 2 + 1], "gram": lambda x: x @ x.T,
    "broadcast": lambda x: jnp.broadcast_to(x[:, None], (x.shape[0], 3, 4)),
}


@pytest.mark.parametrize("name", sorted(BATCH_FUNCTIONS))
def test_jnp_over_a_symbolic_batch(name):
    """Reductions over b, b as a number (dim_as_value), loops of b steps, slices and
    gathers that depend on b: converted once, they match jax.jit at every batch."""
    fn = BATCH_FUNCTIONS[name]
    exe = jaxlite.convert(fn, jax.ShapeDtypeStruct(export.symbolic_shape("b, 4"), jnp.float32)).compile()
    for batch in (1, 2, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(exe(x)), np.asarray(jax.jit(fn)(x)), rtol=1e-5, atol=1e-5)


def _rewritten(src, dst, old, new):
    import zipfile

    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["model.mlir"] = members["model.mlir"].decode().replace(old, new).encode()
    with zipfile.ZipFile(dst, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return dst


def test_hostile_dimension_expressions_are_refused_quickly(tmp_path):
    """Expressions whose comparison would take jax exponential time (many mod/max terms, many
    constraints) and symbols no input has are refused at load, with ModelFormatError."""
    import time

    src = tmp_path / "m.jlite"
    jaxlite.convert(lambda x: x[1:] * 2.0, jax.ShapeDtypeStruct(export.symbolic_shape("b, 4"), jnp.float32)).save(src)
    chain = "+".join(f"mod(b, {k})" for k in range(3, 9))
    constraints = ", ".join(f'"b >= {k}"' for k in range(1, 12))
    for old, new in (('["b"]', f'["{chain}"]'), ('["b - 1"]', f'["b - 1", [{constraints}]]'),
                     ('["b - 1"]', '["c"]')):
        bad = _rewritten(src, tmp_path / "bad.jlite", old, new)
        t = time.perf_counter()
        with pytest.raises(ModelFormatError):
            jaxlite.load(bad)
        assert time.perf_counter() - t < 10


def test_first_call_inside_jit_and_non_arrays():
    w = np.linspace(-1, 1, 64 * 16, dtype=np.float32).reshape(64, 16)
    model = jaxlite.convert(lambda x: x @ w, np.ones((2, 64), np.float32), dynamic_batch=True)
    for options in ({}, {"direct": False}):
        exe = model.compile(**options)
        x = np.ones((3, 64), np.float32)
        np.testing.assert_allclose(np.asarray(jax.jit(exe)(x)), x @ w, rtol=1e-5)  # compiled in a trace
        np.testing.assert_allclose(np.asarray(exe(x)), x @ w, rtol=1e-5)   # its weights are concrete
        np.testing.assert_allclose(np.asarray(exe(x[:2])), x[:2] @ w, rtol=1e-5)
    for bad in ([[1.0] * 64], {"x": x}, None):
        with pytest.raises(SignatureError, match="argument x: expected an array"):
            exe(bad)
    with pytest.raises(ConversionError, match="dynamic_batch=True takes concrete example inputs"):
        jaxlite.convert(lambda x: x, jax.ShapeDtypeStruct(export.symbolic_shape("2, b"), jnp.float32),
                        dynamic_batch=True)


def test_symbols_are_solved_only_from_linear_dimensions():
    b = dims.parse_dim("b")
    m = dims.parse_dim("mod(b, 7)")
    for shapes, actual in ((((m,), (b,)), ((3,), (10,))), (((b,), (m,)), ((10,), (3,)))):
        assert dims.solve(shapes, actual, ["x", "y"]) == {"b": 10}
    with pytest.raises(ValueError, match="no input dimension determines b"):
        dims.solve([(m,)], [(3,)], ["x"])


def test_more_constraints_than_the_ir_keeps_are_a_conversion_error():
    many = tuple(f"b >= {k}" for k in range(1, 11))
    with pytest.raises(ConversionError, match="at most 8 dimension constraints"):
        jaxlite.convert(lambda x: x * 2, jax.ShapeDtypeStruct(export.symbolic_shape("b, 3", constraints=many), jnp.float32))
