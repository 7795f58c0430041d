"""Model files from strangers: whatever a file declares, loading ends in a Model or a
ModelFormatError, in bounded time and memory -- never another exception, never a wrong model."""

import io
import json
import os
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxlite
from jaxlite.examples import digits_mlp

# examples per fuzz test: a bounded number in CI; JAXLITE_FUZZ_EXAMPLES=10000 for a long run
FUZZ_EXAMPLES = int(os.environ.get("JAXLITE_FUZZ_EXAMPLES", "50"))


class _Members(dict):
    def __repr__(self) -> str:  # hypothesis prints the fixtures of a failing example
        return f"<members of a valid model: {', '.join(self)}>"


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """The members of a small valid model file, by name."""
    fn, args = digits_mlp.factory(4)
    path = tmp_path_factory.mktemp("valid") / "mlp.jlite"
    jaxlite.convert(fn, *args, quantize="dynamic").save(path)
    with zipfile.ZipFile(path) as zf:
        return _Members({i.filename: zf.read(i.filename) for i in zf.infolist()})


def _write(path, members: dict[str, bytes], extra: list[tuple[str, bytes]] = ()):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in [*members.items(), *extra]:
            zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if name.endswith((".json", ".mlir"))
                        else zipfile.ZIP_STORED)
    return path


def _with_ir(members, text: str) -> dict[str, bytes]:
    return dict(members, **{"model.mlir": text.encode()})


def _load_bounded(path, seconds=5.0, mib=100):
    """Load (or refuse) within ``seconds`` and ``mib`` of Python allocations."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        return jaxlite.load(path)
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        assert elapsed < seconds and peak < mib, f"{elapsed:.1f} s, {peak:.0f} MiB"


@pytest.mark.parametrize("constant, alias", [
    ("dense<1.000000e+00> : tensor<20000x20000xf32>", ""),                 # the 71 KB file
    ('dense<"0x0000803F"> : tensor<20000x20000xf32>', ""),                 # a splat in hex
    ("dense<1.000000e+00> : tensor<4000000000x4000000000xf32>", ""),       # beyond any memory
    ("dense<1.000000e+00> : !big", "!big = tensor<20000x20000xf32>\n"),  # behind a type alias
])
def test_a_huge_splat_constant_is_refused_before_it_is_built(members, tmp_path, constant, alias):
    lines = members["model.mlir"].decode().splitlines()
    main = next(i for i, line in enumerate(lines) if "func.func @main" in line)
    lines.insert(main + 1, f"    %big = jlax.constant {constant}")  # unused, as in the issue
    path = _write(tmp_path / "evil.jlite", _with_ir(members, alias + "\n".join(lines)))
    with pytest.raises(jaxlite.ModelFormatError, match="dense constant of .* elements"):
        _load_bounded(path, seconds=2.0, mib=50)


def test_ir_text_is_bounded_in_lines(members, tmp_path):
    text = members["model.mlir"].decode().replace("builtin.module {", "builtin.module {" + "\n" * 200_000, 1)
    with pytest.raises(jaxlite.ModelFormatError, match="lines \\(at most"):
        _load_bounded(_write(tmp_path / "long.jlite", _with_ir(members, text)))


def test_deeply_nested_manifest(members, tmp_path):
    text = members["manifest.json"].decode().replace('"metadata": {', '"metadata": {"deep": ' + "[" * 5000 + "]" * 5000
                                                     + ",", 1)
    path = _write(tmp_path / "deep.jlite", dict(members, **{"manifest.json": text.encode()}))
    with pytest.raises(jaxlite.ModelFormatError, match="nests deeper than"):
        _load_bounded(path)


def _npy(shape_text: str, descr="'<f4'", data=b"") -> bytes:
    header = f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape_text}, }}".encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


@pytest.mark.parametrize("version, length_format", [((1, 0), "<H"), ((2, 0), "<I")])
def test_an_npy_header_length_field_is_checked_before_numpy_reads_that_much(members, tmp_path, version,
                                                                            length_format):
    """A flipped bit in the header-length field (found by the fuzz test below) made numpy
    allocate the claimed ~660 MB before it refused the header."""
    manifest = json.loads(members["manifest.json"])
    name, entry = next(iter(manifest["weights"].items()))
    data = b"\x93NUMPY" + bytes(version) + struct.pack(length_format, 662_372_470 % (1 << 16 if version == (1, 0)
                                                                                   else 1 << 32)) + b" " * 100
    replaced = dict(members, **{entry["member"]: data})
    with pytest.raises(jaxlite.ModelFormatError, match="not a valid .npy array .*header length"):
        _load_bounded(_write(tmp_path / "header.jlite", replaced), mib=20)


@pytest.mark.parametrize("shape_text", [
    "(4294967296, 4294967296, 4294967296)",   # the product overflows int64
    "(-1, 64)",
    "(9223372036854775807,)",
])
def test_npy_headers_with_impossible_shapes(members, tmp_path, shape_text):
    manifest = json.loads(members["manifest.json"])
    name, entry = next(iter(manifest["weights"].items()))
    replaced = dict(members, **{entry["member"]: _npy(shape_text)})
    with pytest.raises(jaxlite.ModelFormatError, match="malformed shape|size does not match|not a valid .npy"):
        _load_bounded(_write(tmp_path / "shape.jlite", replaced))


def test_duplicate_members_are_refused(members, tmp_path):
    """zipfile lets the last copy of a name win: a viewer would see one weight, the model run another."""
    manifest = json.loads(members["manifest.json"])
    member = next(iter(manifest["weights"].values()))["member"]
    path = _write(tmp_path / "dup.jlite", members, extra=[(member, members[member])])
    with pytest.raises(jaxlite.ModelFormatError, match="appears twice"):
        jaxlite.load(path)


def test_the_zip_directory_is_bounded_before_it_is_read(members, tmp_path, monkeypatch):
    from jaxlite.compiler import fileformat

    path = _write(tmp_path / "many.jlite", members)
    monkeypatch.setattr(fileformat, "MAX_MEMBERS", len(members) - 1)
    with pytest.raises(jaxlite.ModelFormatError, match="declares .* members"):
        jaxlite.load(path)
    monkeypatch.setattr(fileformat, "MAX_MEMBERS", 1 << 16)
    monkeypatch.setattr(fileformat, "MAX_DIRECTORY", 100)
    with pytest.raises(jaxlite.ModelFormatError, match="directory declares"):
        jaxlite.load(path)


def test_bfloat16_weights_round_trip(tmp_path):
    import jax
    import jax.numpy as jnp
    import ml_dtypes

    w = jnp.asarray(np.random.default_rng(0).standard_normal((16, 8)), jnp.bfloat16)
    fn = lambda x: (x @ w).astype(jnp.float32)  # noqa: E731
    x = np.ones((2, 16), ml_dtypes.bfloat16)
    jaxlite.convert(fn, x).save(tmp_path / "bf16.jlite")
    loaded = jaxlite.load(tmp_path / "bf16.jlite")
    assert loaded.weights["w"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(np.asarray(loaded.compile()(x)), np.asarray(jax.jit(fn)(x)))


def _fuzz_once(data: bytes, tmp_path) -> None:
    path = tmp_path / "fuzz.jlite"
    path.write_bytes(data)
    try:
        model = _load_bounded(path, seconds=10.0, mib=200)
    except jaxlite.ModelFormatError:
        return
    assert isinstance(model, jaxlite.Model)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_files_load_or_raise_model_format_error(members, tmp_path, data):
    """Flipped bytes, truncation, inserted junk, in the zip structure or inside members."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload, compress_type=zipfile.ZIP_STORED)  # mutations reach the members' bytes
    original = bytearray(buf.getvalue())
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
    at = data.draw(st.integers(0, len(original) - 1))
    if kind == "flip":
        for offset in data.draw(st.lists(st.integers(0, 64), min_size=1, max_size=8)):
            original[min(at + offset, len(original) - 1)] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del original[at:]
    elif kind == "insert":
        original[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    else:
        junk = data.draw(st.binary(min_size=1, max_size=16))
        original[at:at + len(junk)] = junk
    _fuzz_once(bytes(original), tmp_path)


_TOKENS = ["jlax.constant ", "dense<", ">", "tensor<", "x", "xf32>", "xi8>", ": ", "%1", "%0", "@", "{", "}",
           "(", ")", "jlax.weight ", "func.func ", "builtin.module", "jlax.add ", "jquant.dynamic_dot ", "= ",
           "#jfuse<activation relu>", "99999999999999999999", "-1", "0x", '"', "!t = ", "\n", "[", "]"]


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_ir_text(members, tmp_path, data):
    """The model's real IR with spans deleted, duplicated or replaced by IR tokens and numbers."""
    text = members["model.mlir"].decode()
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        end = min(len(text), at + data.draw(st.integers(0, 40)))
        kind = data.draw(st.sampled_from(["delete", "duplicate", "insert"]))
        if kind == "delete":
            text = text[:at] + text[end:]
        elif kind == "duplicate":
            text = text[:end] + text[at:end] + text[end:]
        else:
            text = text[:at] + "".join(data.draw(st.lists(st.sampled_from(_TOKENS), max_size=6))) + text[at:]
    _fuzz_once(_write_bytes(_with_ir(members, text)), tmp_path)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(manifest=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                             lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                                 st.sampled_from(["format", "format_version", "weights", "signature", "metadata",
                                                  "member", "dtype", "shape", "inputs", "outputs", "tree"]),
                                 inner, max_size=5), max_leaves=30))
def test_fuzz_crafted_manifests(members, tmp_path, manifest):
    valid = json.loads(members["manifest.json"])
    if isinstance(manifest, dict):  # also keep it mostly valid, so the parts after the header are reached
        manifest = {**valid, **manifest}
    _fuzz_once(_write_bytes(dict(members, **{"manifest.json": json.dumps(manifest).encode()})), tmp_path)


def _write_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return buf.getvalue()
