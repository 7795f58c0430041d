"""WeightStore: the model's arrays, by name, kept out of the IR (``jlax.weight @name``)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from jaxlite.dialects.jlax import WeightOp

_SAFE = re.compile(r"[^A-Za-z0-9_.]")


def sanitize(name: str) -> str:
    """A weight name that prints as a bare MLIR symbol (letters, digits, '_' and '.')."""
    name = _SAFE.sub("_", name).strip("._") or "w"
    return name if (name[0].isalpha() or name[0] == "_") else "w" + name


class WeightStore:
    """name -> numpy array. Arrays are never copied on the way in (views of jax arrays)."""

    def __init__(self, arrays: dict[str, np.ndarray] | None = None):
        self.arrays: dict[str, np.ndarray] = dict(arrays or {})

    def add(self, array: np.ndarray, hint: str) -> str:
        """Store ``array`` under a unique name derived from ``hint``; returns the name."""
        base = sanitize(hint)
        name, i = base, 1
        while name in self.arrays:
            i += 1
            name = f"{base}_{i}"
        self.arrays[name] = array
        return name

    def add_content_named(self, array: np.ndarray, hint: str) -> str:
        """Store under a content-hashed name (identical results of folding share one entry)."""
        digest = hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=6).hexdigest()
        name = f"{sanitize(hint)}.{digest}"
        self.arrays.setdefault(name, array)
        return name

    def prune(self, module: ModuleOp) -> None:
        """Drop every entry no ``jlax.weight`` op of ``module`` refers to."""
        live = {op.weight_name for op in module.walk() if isinstance(op, WeightOp)}
        self.arrays = {k: v for k, v in self.arrays.items() if k in live}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)
