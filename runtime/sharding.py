"""Where a model's arrays live on a device mesh: inputs split along a batch axis, weights
replicated or sharded by name pattern (``compile(mesh=..., weight_sharding=...)``).

jax distributes the program itself (GSPMD): the Executable places each weight with its
``NamedSharding`` once and each call's inputs with the batch sharding, and ``jax.jit``
partitions the XLA program accordingly, across the devices of one host or, after
``jax.distributed.initialize()``, of several. Patterns are fnmatch globs over the weight
names the model lists (as ``skip=`` matches them), applied to the *logical* weight: an
int8 weight ``K.q`` and a half-precision ``K.f16`` / ``K.bf16`` take the spec of ``K``, and
the per-channel ``K.scale`` the entry of that spec along its channel axis, so a quantized
kernel and its scales are split alike.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from xdsl.dialects.builtin import ModuleOp

from jaxlite.dialects.jlax import WeightOp
from jaxlite.errors import DeviceError

# Suffixes quantization gives a weight's stored forms (passes/quantize.py).
_STORED_FORMS = (".q", ".f16", ".bf16")
_SCALE = ".scale"


def check_options(device, mesh, batch_axis: str | None, weight_sharding, direct=None) -> None:
    """DeviceError for mesh options that contradict each other or that jax would misread
    later (``compile(mesh=..., batch_axis=..., weight_sharding=...)``)."""
    if mesh is None:
        if batch_axis is not None or weight_sharding is not None:
            raise DeviceError("batch_axis= and weight_sharding= need mesh=")
        return
    if device is not None:
        raise DeviceError("give device= or mesh=, not both (a mesh names its devices)")
    if direct:
        raise DeviceError("direct=True runs on one CPU thread, not on a mesh")
    if not isinstance(mesh, Mesh):
        raise DeviceError(f"mesh must be a jax.sharding.Mesh (jax.make_mesh(...)), got {type(mesh).__name__}")
    if batch_axis is not None and batch_axis not in mesh.axis_names:
        raise DeviceError(f"batch_axis {batch_axis!r} is not an axis of the mesh {tuple(mesh.axis_names)}")
    if weight_sharding is not None and not isinstance(weight_sharding, Mapping):
        raise DeviceError("weight_sharding must map weight-name patterns to PartitionSpecs, e.g. "
                          "{'params.*.kernel': P(None, 'model')}")
    for pattern, spec in (weight_sharding or {}).items():
        if not isinstance(pattern, str) or not isinstance(spec, P):
            raise DeviceError(f"weight_sharding: {pattern!r}: {spec!r} is not a pattern -> PartitionSpec")
        for axis in (a for entry in spec for a in (entry if isinstance(entry, tuple) else (entry,))):
            if axis is not None and axis not in mesh.axis_names:
                raise DeviceError(f"weight_sharding {pattern!r}: {spec} names {axis!r}, not an axis of the mesh "
                                  f"{tuple(mesh.axis_names)}")


def auto_axes(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis ``Auto``: jax (GSPMD) decides how each op's result is split.
    ``jax.make_mesh`` makes ``Explicit`` axes, under which every op of a model whose operands
    are split differently would need its own output sharding."""
    from jax.sharding import AxisType

    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _logical(name: str) -> str:
    """The weight a stored array stands for: ``K`` for ``K.q``, ``K.f16``, ``K.scale`` and
    for arrays derived from them at load (``K.q@float32``)."""
    name = name.split("@", 1)[0].split("|", 1)[0]
    for suffix in (*_STORED_FORMS, _SCALE):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _scale_axes(module: ModuleOp) -> dict[str, int]:
    """scale weight name -> the axis of its kernel the scales run along (``w_axis``)."""
    axes = {}
    for op in module.walk():
        w_axis = getattr(op, "w_axis", None)
        if not isinstance(w_axis, int):
            continue
        for operand in op.operands:
            if isinstance(operand.owner, WeightOp) and operand.owner.weight_name.endswith(_SCALE):
                axes[operand.owner.weight_name] = w_axis
    return axes


class WeightShardings:
    """The sharding of each array an Executable places on the mesh (replicated by default)."""

    def __init__(self, mesh: Mesh, patterns: Mapping[str, P] | None, module: ModuleOp,
                 weight_names: Sequence[str]):
        self.mesh = mesh
        self.patterns = dict(patterns or {})
        self._scale_axes = _scale_axes(module)
        logical = {_logical(n) for n in weight_names} | set(weight_names)
        for pattern in self.patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in logical):
                warnings.warn(f"weight_sharding: pattern {pattern!r} matches no weight of this model "
                              f"(weights: {', '.join(sorted(weight_names)[:6])}{', ...' if len(weight_names) > 6 else ''})",
                              UserWarning, stacklevel=4)

    def spec(self, name: str, ndim: int) -> P:
        base = _logical(name)
        pattern = next((p for p in self.patterns if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(base, p)), None)
        if pattern is None:
            return P()
        spec = self.patterns[pattern]
        stored = name.split("@", 1)[0]
        if stored.endswith(_SCALE):  # per-channel scales: the kernel spec's entry at the channel axis
            axis = self._scale_axes.get(stored)
            if ndim != 1 or axis is None or axis >= len(spec):
                return P()
            return P(spec[axis])
        if len(spec) > ndim:
            raise DeviceError(f"weight_sharding {pattern!r}: {spec} has {len(spec)} entries, weight {name} "
                              f"has {ndim} axes")
        return spec

    def sharding(self, name: str, array) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(name, len(array.shape)))


def place(array, sharding: NamedSharding, what: str):
    """``array`` on the mesh; DeviceError when its shape does not split as asked."""
    try:
        return jax.device_put(array, sharding)
    except ValueError as e:
        raise DeviceError(f"{what} of shape {list(array.shape)} cannot be split as {sharding.spec} over the "
                          f"mesh {dict(sharding.mesh.shape)}: {str(e).splitlines()[0]}") from None


def replicated(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device of ``mesh``."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: str | None, ndim: int) -> NamedSharding:
    """An input's sharding: axis 0 split over ``batch_axis`` (rank-0 inputs replicated)."""
    if batch_axis is None or ndim == 0:
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, P(batch_axis))
