"""Executable: a compiled model, callable like the function it was converted from.

The whole program is one ``jax.jit``. Weights are placed on the device once. Small ones are
closed over (XLA embeds them as constants: each argument costs ~3 us of dispatch here, a
tiny model would pay more for its weights than for its math); the rest are passed as
arguments, since embedding a 400 MB model took 7.4 s to compile and +1.1 GB of memory
against 0.18 s as arguments. The call path checks the arguments against the signature
(one pytree flatten and a shape/dtype compare) and calls the jitted function.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jaxlite.compiler.errors import DeviceError, SignatureError
from jaxlite.compiler.signature import Signature, TensorSpec
from jaxlite.dialects.jlax import WeightOp
from jaxlite.runtime.kernels import program_for
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp

# Weights are embedded as constants, smallest first, up to this many bytes in all.
EMBED_WEIGHT_BYTES = 16 * 1024 * 1024


def resolve_device(device) -> jax.Device | None:
    """None -> jax's default placement; "cpu"/"gpu" (or "cuda") -> the first such device."""
    if device is None or isinstance(device, jax.Device):
        return device
    if not isinstance(device, str):
        raise DeviceError(f"device must be None, 'cpu', 'gpu' or a jax.Device, got {device!r}")
    kind = device.lower()
    if kind not in ("cpu", "gpu", "cuda", "rocm", "tpu"):
        raise DeviceError(f"unknown device {device!r}: use None, 'cpu' or 'gpu'")
    try:
        devices = jax.devices(kind)
    except RuntimeError:
        devices = []
    if not devices:
        available = sorted({d.platform for d in jax.devices()})
        hint = " (install jaxlite[gpu], i.e. jax's CUDA plugin, on a machine with an NVIDIA GPU)" if kind in ("gpu", "cuda") else ""
        raise DeviceError(f"no {kind} device: jax sees only {', '.join(available)}{hint}")
    return devices[0]


def find_main(module: ModuleOp) -> func.FuncOp:
    for op in module.ops:
        if isinstance(op, func.FuncOp) and op.sym_name.data == "main":
            return op
    raise ValueError("the module has no func.func @main")


def _describe(x) -> str:
    shape = np.shape(x)
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return type(x).__name__
    return f"{np.dtype(dtype).name}[{','.join(map(str, shape))}]"


def _check_leaf(x, spec: TensorSpec, sig: Signature) -> None:
    dtype = getattr(x, "dtype", None)
    shape = getattr(x, "shape", None)
    if dtype is None or shape is None:
        if isinstance(x, bool | int | float | np.generic) and spec.shape == ():
            kind = np.asarray(x).dtype.kind
            if (kind == "b") == (spec.dtype.kind == "b") and (kind == "f") <= (spec.dtype.kind in "fc"):
                return
        raise SignatureError(f"argument {spec.name}: expected {spec.describe()}, got {_describe(x)}"
                             f"\n  expected signature: ({sig.describe_inputs()})")
    if tuple(shape) != spec.shape or jax.dtypes.canonicalize_dtype(dtype) != spec.dtype:
        raise SignatureError(f"argument {spec.name}: expected {spec.describe()}, got {_describe(x)}"
                             f"\n  expected signature: ({sig.describe_inputs()})")


class Executable:
    """``exe(*args)`` runs the model; ``exe.model`` is the Model it came from."""

    def __init__(self, model, device=None):
        self.model = model
        self.device = resolve_device(device)
        self.signature: Signature = model.signature
        main = find_main(model.module)
        program = program_for(main.body.block)
        used = sorted({op.weight_name for op in main.walk() if isinstance(op, WeightOp)},
                      key=lambda n: (model.weights[n].nbytes, n))
        embedded: dict[str, jax.Array] = {}
        budget = EMBED_WEIGHT_BYTES
        self._weights: dict[str, jax.Array] = {}
        for name in used:
            nbytes = model.weights[name].nbytes
            target = embedded if nbytes <= budget else self._weights
            budget -= nbytes if target is embedded else 0
            target[name] = self._place(model.weights[name])

        def run(weights, *args):
            return tuple(program({**embedded, **weights}, args))

        self._jitted = jax.jit(run)
        sig = self.signature
        self._in_treedef = sig.in_treedef
        if self._in_treedef is None:
            self._in_treedef = _builtin_treedef(sig)
        self._expected = [(s.shape, s.dtype) for s in sig.inputs]
        self._out_treedef = sig.out_treedef
        self._single_output = sig.out_tree.kind == "leaf"

    def _place(self, array):
        if self.device is None:
            return jax.device_put(array)
        return jax.device_put(array, self.device)

    def _flatten_args(self, args: tuple) -> list:
        leaves, treedef = jax.tree_util.tree_flatten(args)
        if treedef == self._in_treedef:
            return leaves
        try:
            return self.signature.in_tree.flatten(args, "args")
        except ValueError as e:
            raise SignatureError(f"arguments do not match the model's inputs: {e}\n"
                                 f"  expected signature: ({self.signature.describe_inputs()})") from None

    def _check(self, leaves: list) -> None:
        sig = self.signature
        if len(leaves) != len(sig.inputs):
            raise SignatureError(f"expected {len(sig.inputs)} input arrays, got {len(leaves)}\n"
                                 f"  expected signature: ({sig.describe_inputs()})")
        for x, spec in zip(leaves, sig.inputs, strict=True):
            _check_leaf(x, spec, sig)

    def __call__(self, *args) -> Any:
        leaves, treedef = jax.tree_util.tree_flatten(args)
        # fast path: exact structure, shapes and dtypes (one compare per leaf)
        if treedef != self._in_treedef or any(
            getattr(x, "shape", None) != shape or getattr(x, "dtype", None) != dtype
            for x, (shape, dtype) in zip(leaves, self._expected, strict=False)
        ):
            leaves = self._flatten_args(args)
            self._check(leaves)
        outs = self._jitted(self._weights, *leaves)
        if self._single_output:
            return outs[0]
        if self._out_treedef is not None:
            return jax.tree_util.tree_unflatten(self._out_treedef, outs)
        return self.signature.out_tree.unflatten(outs)

    def lower(self):
        """The jax Lowered object of the whole program (for inspecting the HLO)."""
        specs = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in self.signature.inputs]
        return self._jitted.lower(self._weights, *specs)


def _builtin_treedef(sig: Signature):
    """jax treedef of the input structure when it has only builtin containers, else None."""
    def has_custom(spec):
        return spec.kind in ("custom", "namedtuple") or any(has_custom(c) for c in spec.children)
    if has_custom(sig.in_tree):
        return None
    example = sig.in_tree.unflatten([0] * len(sig.inputs))
    return jax.tree_util.tree_structure(example)
