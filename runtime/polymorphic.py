"""A model with symbolic dimensions, run at whatever sizes a call brings.

Each new combination of input shapes solves the symbols (``dims.solve``), specializes the
IR and the signature to those sizes and compiles them as a static model -- the kernels,
packed weights and the direct path of a static model, so a call at a shape seen before
costs what the static model's call costs plus one dictionary lookup. Specializations are
kept for the most recently used ``max_shapes`` shapes.
"""

from __future__ import annotations

import operator
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.utils.exceptions import VerifyException

from jaxlite.dialects import dims
from jaxlite.dialects.module import verify_module
from jaxlite.dialects.signature import Signature
from jaxlite.dialects.weights import WeightStore
from jaxlite.errors import SignatureError
from jaxlite.runtime import sharding
from jaxlite.runtime.executable import (
    Executable,
    builtin_treedef,
    choose_targets,
    input_leaves,
    resolve_device,
    takes_positional_arrays,
)

_shape = operator.attrgetter("shape")

# Specializations kept (each holds an XLA executable and the kernels' packed weights).
MAX_SHAPES = 16


@dataclass
class Specialized:
    """A symbolic model at one set of symbol values: what an Executable compiles."""

    module: ModuleOp
    weights: WeightStore
    signature: Signature
    env: dict[str, int]


class PolymorphicExecutable:
    """``exe(*args)`` at any sizes the model's symbolic dimensions allow; ``exe.model`` is
    the Model, ``exe.at(*args)`` the static Executable that runs those arguments."""

    def __init__(self, model, options: dict[str, Any], max_shapes: int = MAX_SHAPES):
        self.model = model
        self.signature: Signature = model.signature
        self._options = options
        self.max_shapes = max(1, int(max_shapes))
        # options a specialization would refuse are refused now
        mesh = options.get("mesh")
        sharding.check_options(options.get("device"), mesh, options.get("batch_axis"),
                               options.get("weight_sharding"), options.get("direct"))
        device = resolve_device(options.get("device"))
        platform = (mesh.devices.flat[0].platform if mesh is not None else
                    device.platform if device is not None else jax.default_backend())
        if options.get("targets") is not None:
            choose_targets(platform, options["targets"])
        if mesh is not None and options.get("weight_sharding"):  # warns of patterns that match nothing, once
            sharding.WeightShardings(sharding.auto_axes(mesh), options["weight_sharding"], model.module,
                                     list(model.weights))
        self._cache: OrderedDict[tuple, Executable] = OrderedDict()
        self._placed: dict[str, jax.Array] = {}  # weights and packed arrays, shared by every shape
        self._last: tuple | None = None  # the most recently used shapes (the LRU order's end)
        self._last_exe: Executable | None = None
        self._shapes = [spec.shape for spec in self.signature.inputs]
        self._names = [f"argument {spec.name}" for spec in self.signature.inputs]
        sig = self.signature
        treedef = self._in_treedef = sig.in_treedef if sig.in_treedef is not None else builtin_treedef(sig)
        self._flat_count = len(self._shapes) if takes_positional_arrays(treedef, len(self._shapes)) else -1

    def at(self, *args) -> Executable:
        """The Executable for these arguments' shapes (compiled on first use, then cached)."""
        leaves = list(args) if len(args) == self._flat_count else input_leaves(args, self.signature, self._in_treedef)
        for x, spec in zip(leaves, self.signature.inputs, strict=True):
            if not isinstance(x, np.ndarray | jax.Array | np.generic | int | float | bool):
                raise SignatureError(f"argument {spec.name}: expected an array, got {type(x).__name__}\n"
                                     f"  expected signature: ({self.signature.describe_inputs()})")
        key = tuple(tuple(np.shape(x)) for x in leaves)
        exe = self._cache.get(key)
        if exe is None:
            exe = self._cache[key] = self._compile(key)
            if len(self._cache) > self.max_shapes:
                while len(self._cache) > self.max_shapes:
                    self._cache.popitem(last=False)
                # arrays only evicted shapes used (packings for their row counts) go with them
                live = set().union(*(e.array_names for e in self._cache.values()))
                for name in set(self._placed) - live:
                    del self._placed[name]
        else:
            self._cache.move_to_end(key)
        self._last, self._last_exe = key, exe
        return exe

    def __call__(self, *args) -> Any:
        if len(args) == self._flat_count:  # positional arrays (the common case), kept short
            try:
                key = tuple(map(_shape, args))
            except AttributeError:  # a Python scalar: the general path
                return self.at(*args)(*args)
            if key == self._last:
                return self._last_exe(*args)
            exe = self._cache.get(key)
            if exe is not None:
                self._cache.move_to_end(key)
                self._last, self._last_exe = key, exe
                return exe(*args)
        return self.at(*args)(*args)

    def env(self, shapes) -> dict[str, int]:
        """The symbols' values for these input shapes; SignatureError naming the dimension
        that does not fit."""
        for name, spec, shape in zip(self._names, self.signature.inputs, shapes, strict=True):
            if len(shape) != len(spec.shape):
                raise SignatureError(f"{name}: expected {spec.describe()}, got rank {len(shape)} "
                                     f"{list(shape)}\n  expected signature: ({self.signature.describe_inputs()})")
            for j, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
                if not dims.is_symbolic(want) and want != got:
                    raise SignatureError(f"{name} dimension {j} must be {want}, got {got} (expected "
                                         f"{spec.describe()})\n  expected signature: ({self.signature.describe_inputs()})")
        try:
            return dims.solve(self._shapes, shapes, self._names)
        except ValueError as e:
            raise SignatureError(f"{e}\n  expected signature: ({self.signature.describe_inputs()})") from None

    def _compile(self, shapes) -> Executable:
        # made outside any trace the call may be in (jax.jit of a function calling us): the
        # weights placed here are shared by later calls, so they must be concrete arrays
        with jax.ensure_compile_time_eval(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="weight_sharding: pattern")  # said once, by __init__
            return self._compile_traced(shapes)

    def _compile_traced(self, shapes) -> Executable:
        env = self.env(shapes)
        module = dims.specialize(self.model.module, env)
        try:
            verify_module(module)
        except VerifyException as e:
            values = ", ".join(f"{k}={v}" for k, v in sorted(env.items()))
            raise SignatureError(f"the model does not run at {values}: {str(e).splitlines()[0]}") from None
        spec = Specialized(module, self.model.weights, self.signature.specialized(env), env)
        return Executable(spec, **self._options, placed=self._placed)

    @property
    def shapes_compiled(self) -> list[tuple]:
        """The input shapes of the cached specializations, least recently used first."""
        return list(self._cache)

    def describe_kernels(self) -> str:
        """What the most recently used specialization runs (``Executable.describe_kernels``)."""
        if not self._cache:
            return "no shape compiled yet (specialized at the first call)"
        key, exe = next(reversed(self._cache.items()))
        return f"{exe.describe_kernels()} (at {', '.join(map(str, key))})"

    @property
    def direct(self) -> bool:
        return bool(self._cache) and next(reversed(self._cache.values())).direct

    def lower(self, *args):
        """jax's Lowered program at these arguments' shapes."""
        return self.at(*args).lower()
