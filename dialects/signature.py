"""Input/output signatures: leaf names, shapes, dtypes and the pytree structure around them.

The structure is kept twice: as jax's PyTreeDef (exact, for models converted in this
process) and as a JSON-able ``TreeSpec`` (for model files: rebuilt with plain containers,
so loading needs none of the user's classes; custom nodes come back as dicts).
"""

from __future__ import annotations

import collections
import keyword
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

from jaxlite.dialects import dims
from jaxlite.dialects.types import dtype_name, parse_dtype
from jaxlite.errors import ModelFormatError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, and symbolic dimensions (dims.py) in a model with dynamic shapes
    dtype: np.dtype

    def describe(self) -> str:
        return f"{self.dtype.name}[{','.join(map(str, self.shape))}]"

    @property
    def short_name(self) -> str:
        """The last component of the name's path: ``u`` for ``inp['u']``, ``x`` for ``t[1].x``."""
        m = re.search(r"(?:\['([^']*)'\]|\[\"([^\"]*)\"\]|\.(\w+)|\[(\d+)\])$", self.name)
        return next(g for g in m.groups() if g is not None) if m else self.name

    def to_json(self) -> dict:
        shape = [dims.dim_text(x) if dims.is_symbolic(x) else int(x) for x in self.shape]
        return {"name": self.name, "shape": shape, "dtype": dtype_name(self.dtype)}

    @staticmethod
    def from_json(d: dict, constraints: tuple[str, ...] = ()) -> TensorSpec:
        shape = tuple(dims.parse_dim(x, constraints) if isinstance(x, str) else int(x) for x in d["shape"])
        return TensorSpec(str(d["name"]), shape, parse_dtype(d["dtype"]))

    def specialized(self, env) -> TensorSpec:
        """This spec with its symbolic dimensions given the values in ``env``."""
        return TensorSpec(self.name, tuple(dims.evaluate(x, env) for x in self.shape), self.dtype)


def key_str(k) -> str:
    if isinstance(k, DictKey):
        return f"[{k.key!r}]"
    if isinstance(k, GetAttrKey):
        return f".{k.name}"
    if isinstance(k, SequenceKey):
        return f"[{k.idx}]"
    if isinstance(k, FlattenedIndexKey):
        return f"[{k.key}]"
    return str(k)


def _key_value(k):
    if isinstance(k, DictKey):
        return k.key
    if isinstance(k, GetAttrKey):
        return k.name
    if isinstance(k, SequenceKey):
        return k.idx
    if isinstance(k, FlattenedIndexKey):
        return k.key
    return str(k)


@dataclass
class TreeSpec:
    """A JSON-able pytree structure: kind in leaf/none/tuple/list/dict/namedtuple/custom."""

    kind: str
    children: list[TreeSpec] = field(default_factory=list)
    keys: list[Any] = field(default_factory=list)
    type_name: str = ""

    @staticmethod
    def of(tree) -> TreeSpec:
        if tree is None:
            return TreeSpec("none")
        if isinstance(tree, tuple) and hasattr(tree, "_fields"):
            return TreeSpec("namedtuple", [TreeSpec.of(c) for c in tree], list(tree._fields),
                            type(tree).__name__)
        if type(tree) in (tuple, list):
            return TreeSpec(type(tree).__name__, [TreeSpec.of(c) for c in tree])
        if type(tree) is dict:
            keys = sorted(tree)
            return TreeSpec("dict", [TreeSpec.of(tree[k]) for k in keys], keys)
        if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(tree)):
            return TreeSpec("leaf")
        kids, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is not tree)
        return TreeSpec("custom", [TreeSpec.of(c) for _, c in kids],
                        [_key_value(p[0]) for p, _ in kids], type(tree).__name__)

    @property
    def num_leaves(self) -> int:
        return 1 if self.kind == "leaf" else sum(c.num_leaves for c in self.children)

    def unflatten(self, leaves) -> Any:
        it = iter(leaves)
        out = self._build(it)
        return out

    def _build(self, it):
        if self.kind == "leaf":
            return next(it)
        if self.kind == "none":
            return None
        kids = [c._build(it) for c in self.children]
        if self.kind == "tuple":
            return tuple(kids)
        if self.kind == "list":
            return kids
        if self.kind == "namedtuple":
            return _namedtuple_class(self.type_name, tuple(self.keys))(*kids)
        return dict(zip(self.keys, kids, strict=True))  # dict, and custom nodes as dicts

    def flatten(self, value, path: str = "") -> list:
        """Leaves of ``value`` in this structure's order; dicts may stand for custom nodes.

        Raises ValueError naming the first place where ``value`` does not fit."""
        if self.kind == "leaf":
            if value is None or isinstance(value, tuple | list | dict):
                raise ValueError(f"{path or 'value'}: expected an array, got {_describe(value)}")
            return [value]
        if self.kind == "none":
            if value is not None:
                raise ValueError(f"{path or 'value'}: expected None, got {type(value).__name__}")
            return []
        if self.kind in ("tuple", "list", "namedtuple"):
            if not isinstance(value, tuple | list) or len(value) != len(self.children):
                raise ValueError(f"{path or 'value'}: expected a {self.kind} of "
                                 f"{len(self.children)}, got {_describe(value)}")
            return [x for i, c in enumerate(self.children) for x in c.flatten(value[i], f"{path}[{i}]")]
        out = []
        for k, c in zip(self.keys, self.children, strict=True):
            if isinstance(value, dict):
                if k not in value:
                    raise ValueError(f"{path or 'value'}: missing key {k!r}")
                child = value[k]
            elif isinstance(k, str) and hasattr(value, k):
                child = getattr(value, k)
            else:
                raise ValueError(f"{path or 'value'}: expected a {self.type_name or 'dict'} "
                                 f"with keys {self.keys}, got {_describe(value)}")
            out += c.flatten(child, f"{path}[{k!r}]")
        if isinstance(value, dict) and len(value) != len(self.keys):
            extra = sorted(map(str, set(value) - set(self.keys)))
            raise ValueError(f"{path or 'value'}: unexpected keys {extra}")
        return out

    def to_json(self) -> dict:
        d: dict[str, Any] = {"kind": self.kind}
        if self.children:
            d["children"] = [c.to_json() for c in self.children]
        if self.keys:
            d["keys"] = list(self.keys)
        if self.type_name:
            d["type"] = self.type_name
        return d

    @staticmethod
    def from_json(d: dict) -> TreeSpec:
        kind = d.get("kind")
        if kind not in ("leaf", "none", "tuple", "list", "dict", "namedtuple", "custom"):
            raise ModelFormatError(f"manifest: unknown pytree node kind {kind!r}")
        spec = TreeSpec(kind, [TreeSpec.from_json(c) for c in d.get("children", [])],
                        list(d.get("keys", [])), str(d.get("type", "")))
        if kind in ("dict", "namedtuple", "custom") and len(spec.keys) != len(spec.children):
            raise ModelFormatError("manifest: pytree node keys and children differ in number")
        if kind == "namedtuple" and not all(
            isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k) for k in spec.keys
        ):
            raise ModelFormatError("manifest: namedtuple fields must be identifiers")
        return spec


def _describe(value) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


_NT_CACHE: dict[tuple, type] = {}


def _namedtuple_class(name: str, fields: tuple[str, ...]):
    key = (name, fields)
    if key not in _NT_CACHE:
        safe = name if name.isidentifier() and not keyword.iskeyword(name) else "Outputs"
        _NT_CACHE[key] = collections.namedtuple(safe, fields)
    return _NT_CACHE[key]


@dataclass
class Signature:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    in_tree: TreeSpec
    out_tree: TreeSpec
    in_treedef: Any = None   # jax PyTreeDef, when known exactly (converted in this process)
    out_treedef: Any = None

    def to_json(self) -> dict:
        d = {"inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs],
             "input_tree": self.in_tree.to_json(), "output_tree": self.out_tree.to_json()}
        if self.constraints():
            d["dim_constraints"] = list(self.constraints())
        return d

    def constraints(self) -> tuple[str, ...]:
        """The constraints on the symbolic dimensions (``("t <= 64",)``), if any."""
        for spec in (*self.inputs, *self.outputs):
            for x in spec.shape:
                if dims.is_symbolic(x):
                    return dims.constraints_of(x)
        return ()

    @staticmethod
    def from_json(d: dict) -> Signature:
        try:
            constraints = tuple(str(c) for c in d.get("dim_constraints", ()))
            sig = Signature([TensorSpec.from_json(x, constraints) for x in d["inputs"]],
                            [TensorSpec.from_json(x, constraints) for x in d["outputs"]],
                            TreeSpec.from_json(d["input_tree"]), TreeSpec.from_json(d["output_tree"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFormatError(f"manifest: malformed signature ({type(e).__name__}: {e})") from None
        if sig.in_tree.num_leaves != len(sig.inputs) or sig.out_tree.num_leaves != len(sig.outputs):
            raise ModelFormatError("manifest: signature leaves do not match its pytree structure")
        return sig

    @property
    def symbolic(self) -> bool:
        """Whether an input or output has a symbolic dimension (a model with dynamic shapes)."""
        return any(not dims.is_static_shape(s.shape) for s in (*self.inputs, *self.outputs))

    def symbols(self) -> list[str]:
        return dims.symbols([s.shape for s in (*self.inputs, *self.outputs)])

    def specialized(self, env) -> Signature:
        """The signature at the symbol values ``env`` (the pytree structure unchanged)."""
        return Signature([s.specialized(env) for s in self.inputs], [s.specialized(env) for s in self.outputs],
                         self.in_tree, self.out_tree, self.in_treedef, self.out_treedef)

    def match_named(self, names: Sequence[str]) -> list[str] | None:
        """The given array names in input order, matched by the rule everywhere named arrays
        meet a model's inputs (an .npz file, a dataset's columns): a name matches an input
        whose signature name it equals (``inp['u']``) or whose last path component it is
        (``u``). None when the names are numpy's positional ``arr_0, arr_1, ...`` (np.savez
        without names): then they go in order. ValueError when names match some inputs but
        not all, or more than one input."""
        if list(names) == [f"arr_{i}" for i in range(len(names))]:
            return None
        chosen = []
        for spec in self.inputs:
            candidates = [n for n in names if n == spec.name] or [n for n in names if n == spec.short_name]
            if len(candidates) != 1:
                problem = "no array" if not candidates else f"{len(candidates)} arrays"
                raise ValueError(f"{problem} named for input {spec.name}: the arrays are named "
                                 f"{', '.join(names)}; name each after an input ({self.describe_inputs()}) "
                                 "or its last part, or save them unnamed in input order")
            chosen.append(candidates[0])
        extra = [n for n in names if n not in chosen]
        if extra:
            raise ValueError(f"arrays {', '.join(extra)} match no input of the model ({self.describe_inputs()})")
        return chosen

    def describe_inputs(self) -> str:
        constraints = self.constraints()
        return ", ".join(f"{s.name}: {s.describe()}" for s in self.inputs) + (
            f"; where {', '.join(constraints)}" if constraints else "")
