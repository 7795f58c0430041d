"""The ``.jlite`` model file: one zip holding

* ``manifest.json`` -- format name and version, jaxlite version, signature, weight table;
* ``model.mlir``    -- the IR as text (parseable by xDSL with jaxlite's dialects);
  both deflated;
* ``weights/N.npy`` -- one ``.npy`` per weight (no pickle: object dtypes are refused).

Weights are stored uncompressed, so loading maps them straight from the file (np.memmap)
instead of reading them into memory. Saving writes a temporary file and renames it.

Versions: 3 may hold symbolic dimensions (``tensor<?x64xf32, ["b"]>``, ``#jlax.dim<"b*t">``,
and expressions such as ``"b"`` in the signature's shapes); 2 writes the inherent
parameters of jfuse/jquant ops as typed properties (``activation = #jfuse<activation relu>``,
``axis = 1 : i64``); version 1 files (strings and ``#builtin.int<1>``) are upgraded as they
load. Versions 1 and 2 are read as they are (version 3 only added syntax).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import ml_dtypes
import numpy as np

from jaxlite.dialects.weights import WeightStore
from jaxlite.errors import ModelFormatError, SaveError

FORMAT_NAME = "jaxlite"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"
IR_MEMBER = "model.mlir"
# Limits that bound the memory and time of loading any file, checked before anything is
# allocated by it: real models stay far below them (a 4-layer transformer's IR: 47 KB, 465 lines).
MAX_TEXT_MEMBER = 32 << 20     # bytes of manifest.json or model.mlir
MAX_MEMBERS = 1 << 16          # zip entries (each costs a Python object before anything is read)
MAX_DIRECTORY = 8 << 20        # bytes of the zip's central directory (which zipfile reads whole)
MAX_NAME_LENGTH = 1024         # of a zip member or weight name
MAX_JSON_DEPTH = 64            # nesting of the manifest (signatures of deep pytrees included)
MAX_NPY_HEADER = 10000         # bytes of a weight's .npy header (numpy's own default bound)
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # zip local file header (30 bytes)


def _storable(array: np.ndarray) -> np.ndarray:
    """What .npy can hold: bfloat16 (not a numpy dtype) as its 16-bit patterns."""
    return array.view(np.uint16) if array.dtype == ml_dtypes.bfloat16 else array


def _stored_as(array: np.ndarray, dtype: str) -> np.ndarray:
    """The weight as the manifest's ``dtype``, reading bfloat16 back from its bit patterns
    (uint16; files of jaxlite 0.1 wrote numpy's 2-byte void)."""
    if dtype == "bfloat16" and array.dtype.itemsize == 2 and array.dtype.kind in "uV":
        return array.view(ml_dtypes.bfloat16)
    return array


def save(path: str | os.PathLike, manifest: dict, ir_text: str, weights: WeightStore) -> None:
    """Write the model file (atomically and durably: ``write_file``)."""
    table = {}
    members = []
    for i, (name, array) in enumerate(weights.arrays.items()):
        member = f"weights/{i}.npy"
        table[name] = {"member": member, "dtype": array.dtype.name, "shape": list(array.shape)}
        members.append((member, array))
    manifest = {**manifest, "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "weights": table}

    def write(raw) -> None:
        with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            # text members are deflated (IR text compresses ~7x); weights stay stored for mmap
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1), compress_type=zipfile.ZIP_DEFLATED)
            zf.writestr(IR_MEMBER, ir_text, compress_type=zipfile.ZIP_DEFLATED)
            for member, array in members:
                with zf.open(member, "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, _storable(np.ascontiguousarray(array)), allow_pickle=False)

    write_file(path, write)


def write_file(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a file atomically and durably with ``write(stream)``: into a temporary file
    beside the target (fsynced), renamed over it, then the directory fsynced -- a crash
    leaves the old file or the new one, never a torn one. A symlink is written through (its
    target is replaced), an existing file keeps its permissions, and temporary files that
    killed writes left behind are removed. Errors name the target (``SaveError``)."""
    target = Path(os.path.realpath(path))
    _remove_stale_temporaries(target)
    try:
        mode = target.stat().st_mode & 0o7777 if target.exists() else None
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise SaveError(f"cannot save {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as raw:
            write(raw)
            raw.flush()
            os.fsync(raw.fileno())
        if mode is None:  # mkstemp makes 0600; a new file is an ordinary file
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        _fsync_directory(target.parent)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise SaveError(f"cannot save {path}: {e.strerror or e}") from e
        raise


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the platform allows opening directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temporaries(target: Path) -> None:
    """Temporary files of earlier saves of ``target`` whose process is gone (killed mid-save)."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"(\d+)\.[^.]+\.tmp")
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:  # no such process: nobody is writing it any more
            try:
                entry.unlink()
            except OSError:
                pass
        except (PermissionError, OverflowError, OSError):
            continue


def upgrade_ir_text(text: str, version: int) -> str:
    """The IR text of a version-``version`` file in the current syntax."""
    if version == 1:
        text = re.sub(r'\bactivation = "([a-z0-9_]+)"', r"activation = #jfuse<activation \1>", text)
        text = re.sub(r"\b(w_axis|axis) = #builtin\.int<(-?\d+)>", r"\1 = \2 : i64", text)
    return text


def _safe_member(name: str) -> bool:
    p = Path(name)
    return not (name.startswith(("/", "\\")) or ".." in p.parts or ":" in name or "\\" in name)


def _check_directory(fh, source: str) -> None:
    """The entry count and central-directory size the zip's end record declares (zip64
    included), checked before zipfile builds an object per entry."""
    record = zipfile._EndRecData(fh)  # the record zipfile itself reads first
    if record is None:
        return  # not a zip: zipfile says so
    if record[zipfile._ECD_ENTRIES_TOTAL] > MAX_MEMBERS:
        raise ModelFormatError(f"{source}: the archive declares {record[zipfile._ECD_ENTRIES_TOTAL]} members "
                               f"(at most {MAX_MEMBERS})")
    if record[zipfile._ECD_SIZE] > MAX_DIRECTORY:
        raise ModelFormatError(f"{source}: the archive's directory declares {record[zipfile._ECD_SIZE]} bytes "
                               f"(at most {MAX_DIRECTORY})")


def _json_depth(text: str) -> int:
    """The deepest nesting of brackets outside strings (json's recursion would fail first)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _read_text(zf: zipfile.ZipFile, member: str, source: str) -> str:
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise ModelFormatError(f"{source}: missing member {member!r}") from None
    if info.file_size > MAX_TEXT_MEMBER:
        raise ModelFormatError(f"{source}: member {member!r} declares an absurd size ({info.file_size} bytes)")
    try:
        return zf.read(member).decode("utf-8")
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ModelFormatError(f"{source}: member {member!r} is damaged or truncated ({e})") from None
    except UnicodeDecodeError:
        raise ModelFormatError(f"{source}: member {member!r} is not UTF-8 text") from None


def _map_weight(path: Path, fh, info: zipfile.ZipInfo, file_size: int, source: str) -> np.ndarray:
    if info.compress_type != zipfile.ZIP_STORED:
        raise ModelFormatError(f"{source}: weight member {info.filename!r} is compressed (jaxlite writes them stored)")
    fh.seek(info.header_offset)
    header = fh.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise ModelFormatError(f"{source}: bad local header for {info.filename!r} (truncated file?)")
    fields = _LOCAL_HEADER.unpack(header)
    data_start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
    if data_start + info.file_size > file_size:
        raise ModelFormatError(f"{source}: weight member {info.filename!r} runs past the end of the file (truncated)")
    fh.seek(data_start)
    try:
        version = np.lib.format.read_magic(fh)
        # numpy reads as many bytes as the header's length field says before checking it
        # against max_header_size: a damaged field would allocate up to 4 GiB
        length_format = "<H" if version == (1, 0) else "<I"
        length_field = fh.read(struct.calcsize(length_format))
        (header_length,) = struct.unpack(length_format, length_field)
        if header_length > min(MAX_NPY_HEADER, info.file_size):
            raise ValueError(f"header length {header_length} is absurd")
        fh.seek(-len(length_field), os.SEEK_CUR)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(fh, max_header_size=MAX_NPY_HEADER)
    except Exception as e:  # numpy parses the header with ast/tokenize: any of their errors
        raise ModelFormatError(f"{source}: weight member {info.filename!r} is not a valid .npy array ({e})") from None
    if dtype.hasobject:
        raise ModelFormatError(f"{source}: weight member {info.filename!r} holds Python objects (refused: no pickle)")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ModelFormatError(f"{source}: weight member {info.filename!r} has a malformed shape {shape}")
    offset = fh.tell()
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if offset - data_start + nbytes != info.file_size:
        raise ModelFormatError(f"{source}: weight member {info.filename!r} size does not match its header")
    if nbytes == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape),
                     order="F" if fortran else "C")


def load(path: str | os.PathLike) -> tuple[dict, str, WeightStore]:
    """Read and check a model file: (manifest, IR text, weights). Raises ModelFormatError."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ModelFormatError(f"{source}: no such file")
    file_size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            _check_directory(fh, source)
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, struct.error, ValueError):
        raise ModelFormatError(f"{source}: not a jaxlite model file (not a zip archive, or truncated)") from None
    except OSError as e:
        raise ModelFormatError(f"{source}: cannot be read ({e})") from None
    with zf:
        seen: set[str] = set()
        for info in zf.infolist():
            if len(info.filename) > MAX_NAME_LENGTH or not _safe_member(info.filename):
                raise ModelFormatError(f"{source}: member path {info.filename[:80]!r} escapes the archive or is too long")
            if info.filename in seen:  # zipfile would let the last copy win
                raise ModelFormatError(f"{source}: member {info.filename!r} appears twice")
            seen.add(info.filename)
            if info.header_offset + info.compress_size > file_size or info.file_size > (1 << 40):
                raise ModelFormatError(f"{source}: member {info.filename!r} declares an absurd size (truncated or forged file)")
        text = _read_text(zf, MANIFEST, source)
        if _json_depth(text) > MAX_JSON_DEPTH:
            raise ModelFormatError(f"{source}: manifest.json nests deeper than {MAX_JSON_DEPTH} levels")
        try:
            manifest = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ModelFormatError(f"{source}: manifest.json is not valid JSON ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise ModelFormatError(f"{source}: manifest.json does not describe a jaxlite model")
        version = manifest.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ModelFormatError(f"{source}: unknown format version {version!r} "
                                   f"(this jaxlite reads versions {', '.join(map(str, READABLE_VERSIONS))})")
        ir_text = upgrade_ir_text(_read_text(zf, IR_MEMBER, source), version)
        table = manifest.get("weights")
        if not isinstance(table, dict):
            raise ModelFormatError(f"{source}: manifest.json has no weight table")
        store = WeightStore()
        with open(path, "rb") as fh:
            for name, entry in table.items():
                try:
                    member, dtype, shape = entry["member"], entry["dtype"], tuple(entry["shape"])
                except (KeyError, TypeError):
                    raise ModelFormatError(f"{source}: malformed weight table entry for {name!r}") from None
                if not isinstance(member, str) or len(name) > MAX_NAME_LENGTH:
                    raise ModelFormatError(f"{source}: malformed weight table entry for {name[:80]!r}")
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise ModelFormatError(f"{source}: weight {name!r}: missing member {member!r}") from None
                array = _stored_as(_map_weight(path, fh, info, file_size, source), dtype)
                if array.dtype.name != dtype or array.shape != shape:
                    raise ModelFormatError(f"{source}: weight {name!r} is {array.dtype.name}{list(array.shape)}, "
                                           f"manifest says {dtype}{list(shape)}")
                store.arrays[name] = array
    return manifest, ir_text, store
