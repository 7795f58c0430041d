"""Batch inference over datasets with Ray Data: ``jaxlite.ray.Predictor``.

    ds.map_batches(jaxlite.ray.Predictor, fn_constructor_kwargs={"path": "m.jlite"},
                   batch_format="numpy", concurrency=4)

Ray instantiates the class once per actor (the model is loaded and compiled once there) and
calls it with each batch as a ``dict[str, np.ndarray]``. This module needs nothing from Ray
itself (``pip install jaxlite[ray]`` installs Ray Data for the pipeline around it).
"""

from __future__ import annotations

import numpy as np

from jaxlite.errors import SignatureError


class Predictor:
    """A Ray Data batch callable running a .jlite model (``**compile_options`` go to
    ``Model.compile``). Columns are matched to the model's inputs by name (an input's name
    or its last part, as ``.npz`` files are), or, for a one-input model, the only column
    (``ray.data.from_numpy`` names it ``data``). It returns one column per output, named
    ``output`` for a single output. A model with a symbolic batch takes each batch as it
    comes; a static one runs it in pieces of its batch size, the last padded (and the
    padding's outputs dropped)."""

    def __init__(self, path, **compile_options):
        from jaxlite.compiler.model import load

        self.model = load(path)
        self.signature = self.model.signature
        self.exe = self.model.compile(**compile_options)
        from jaxlite.dialects import dims

        specs = self.signature.inputs
        self._static_batch = None  # the fixed axis 0 every input shares, if any (else: batches as they come)
        if specs and all(spec.shape and not dims.is_symbolic(spec.shape[0]) for spec in specs):
            sizes = {spec.shape[0] for spec in specs}
            self._static_batch = sizes.pop() if len(sizes) == 1 else None
        outs = self.signature.outputs
        names = [spec.short_name for spec in outs]
        self.output_names = ["output"] if len(outs) == 1 else (
            names if len(set(names)) == len(names) else [spec.name for spec in outs])

    def _columns(self, batch: dict) -> list[np.ndarray]:
        if not isinstance(batch, dict):
            raise SignatureError(f"Predictor takes a dict of columns (map_batches(..., batch_format='numpy')), "
                                 f"got {type(batch).__name__}")
        names = list(batch)
        if len(self.signature.inputs) == 1 and len(names) == 1:
            return [np.asarray(batch[names[0]])]
        try:
            order = self.signature.match_named(names)
        except ValueError as e:
            raise SignatureError(f"batch columns: {e}") from None
        return [np.asarray(batch[n]) for n in (order if order is not None else names)]

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        columns = self._columns(batch)
        columns = [c.astype(spec.dtype, copy=False) for c, spec in zip(columns, self.signature.inputs, strict=True)]
        rows = len(columns[0]) if columns and columns[0].ndim else 0
        if any(c.ndim == 0 or len(c) != rows for c in columns):
            raise SignatureError(f"batch columns must have one row per sample, got lengths "
                                 f"{[len(c) if c.ndim else 0 for c in columns]}")
        if rows == 0:  # nothing to run: empty columns of the outputs' row shapes, where fixed
            return {name: np.zeros((0, *self._row_shape(spec)), spec.dtype)
                    for name, spec in zip(self.output_names, self.signature.outputs, strict=True)}
        size = self._static_batch
        if size is None:
            outputs = [self._run(columns)]
        else:
            outputs = []
            for start in range(0, rows, size):
                piece = [c[start:start + size] for c in columns]
                short = size - len(piece[0])
                if short:  # the model takes exactly `size` rows: repeat the last one
                    piece = [np.concatenate([p, np.repeat(p[-1:], short, axis=0)]) for p in piece]
                outputs.append([o[: size - short] for o in self._run(piece)])
        return {name: np.concatenate([o[i] for o in outputs]) if len(outputs) > 1 else outputs[0][i]
                for i, name in enumerate(self.output_names)}

    @staticmethod
    def _row_shape(spec) -> tuple[int, ...]:
        from jaxlite.dialects import dims

        if not spec.shape or not dims.is_static_shape(spec.shape[1:]):
            raise SignatureError(f"an empty batch: output {spec.name} ({spec.describe()}) has no fixed row shape")
        return tuple(spec.shape[1:])

    def _run(self, leaves: list[np.ndarray]) -> list[np.ndarray]:
        import jax

        out = self.exe(*self.signature.in_tree.unflatten(leaves))
        arrays = [np.asarray(x) for x in jax.tree_util.tree_leaves(out)]
        if any(a.ndim == 0 for a in arrays):
            raise SignatureError("every output needs a row per sample (a batch axis 0) to become a column")
        return arrays
