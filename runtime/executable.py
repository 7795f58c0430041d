"""Executable: a compiled model, callable like the function it was converted from.

The whole program is one ``jax.jit``. Weights are placed on the device once. Small ones are
closed over (XLA embeds them as constants: no per-argument dispatch, which a tiny model
would pay more for than for its math, and constant kernels prepared at compile time); the
rest are passed as arguments, since embedding big models costs compile time and keeps the
weights resident twice (figures: docs/ARCHITECTURE.md). ``embed_weights_bytes`` moves the
line. Which kernel runs each op comes from
the registry, by the Executable's target order (runtime/lowering.py). The call path checks
the arguments against the signature (one pytree flatten and a shape/dtype compare) and
calls the jitted function.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxlite.dialects.module import find_main
from jaxlite.dialects.signature import Signature, TensorSpec
from jaxlite.errors import DeviceError, SignatureError
from jaxlite.runtime import sharding
from jaxlite.runtime.host_plan import HostPlan, worth_tracing
from jaxlite.runtime.lowering import Lowering
from jaxlite.runtime.registry import TARGETS, available_targets

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


def _describe(x) -> str:
    aval = getattr(x, "aval", None)
    shape, dtype = (aval.shape, aval.dtype) if aval is not None else (np.shape(x), getattr(x, "dtype", None))
    if dtype is None:
        return type(x).__name__
    return f"{np.dtype(dtype).name}[{','.join(map(str, shape))}]"


def _jax_type_error(e: TypeError) -> str:
    """jax's message for a non-array argument, in one line with the argument's path."""
    text = str(e)
    path = re.search(r"at path (\S+?)\.?$", text.splitlines()[0])
    kind = re.search(r"of type <class '([^']+)'>", text)
    if path and kind:
        return f"{path.group(1)} is a {kind.group(1)}"
    return text.splitlines()[0]


def _checked_leaf(x, spec: TensorSpec, sig: Signature):
    """``x`` (a tracer) as the input ``spec`` describes, or a SignatureError.

    Runs while jax traces, i.e. once per new argument signature, never per call. Weakly
    typed Python scalars are cast the way jax.jit casts them."""
    aval = x.aval
    if tuple(aval.shape) == spec.shape and aval.dtype == spec.dtype:
        return x
    if getattr(aval, "weak_type", False) and tuple(aval.shape) == spec.shape \
            and (aval.dtype.kind == "b") == (spec.dtype.kind == "b") and not (aval.dtype.kind == "f" and spec.dtype.kind in "iu"):
        return x.astype(spec.dtype)
    raise SignatureError(f"argument {spec.name}: expected {spec.describe()}, got {_describe(x)}"
                         f"\n  expected signature: ({sig.describe_inputs()})")


def choose_targets(platform: str, targets: Sequence[str] | None = None, *, float16_compute: bool = False,
                   native: bool = True) -> tuple[str, ...]:
    """The target order of an Executable on ``platform`` ("cpu" or "gpu"): the given
    ``targets`` (checked: known, available, for this platform), else this platform's
    available targets (the CPU's native ones unless ``native`` is False), ``xla-float16``
    first with ``float16_compute``; ``xla`` always last."""
    available = available_targets()
    if targets is not None:
        for t in targets:
            if t not in TARGETS:
                raise DeviceError(f"unknown target {t!r}; targets: {', '.join(TARGETS)}")
            if t not in available:
                raise DeviceError(f"target {t!r} is not available here: {TARGETS[t].unavailable()} "
                                  "(jaxlite doctor lists the targets)")
            if not t.startswith(("xla", f"{platform}-")):
                raise DeviceError(f"target {t!r} does not run on the {platform} device")
        chosen = list(targets)
    else:
        chosen = [t for t in available if native and t.startswith(f"{platform}-")]
        if float16_compute:
            chosen.insert(0, "xla-float16")
    return tuple(dict.fromkeys([*chosen, "xla"]))


class Executable:
    """``exe(*args)`` runs the model; ``exe.model`` is the Model it came from."""

    def __init__(self, model, device=None, float16_compute: bool | None = None,
                 embed_weights_bytes: int | None = None, native_gemm: bool = True, direct: bool | None = None,
                 targets: Sequence[str] | None = None, placed: dict | None = None, mesh=None,
                 batch_axis: str | None = None, weight_sharding=None):
        """Options as in ``Model.compile``: ``float16_compute`` (f16 math on f16 weights;
        default on GPU), ``embed_weights_bytes`` (constants budget), ``native_gemm`` (the
        CPU's native kernels), ``direct`` (small native programs without XLA), ``targets``
        (the kernel targets in order of preference; default: what this machine has).
        ``placed``: device arrays by weight / derived-array name shared by the Executables
        of one model at different shapes (each is placed and packed once). ``mesh``,
        ``batch_axis``, ``weight_sharding``: the program over a device mesh (runtime/sharding.py)."""
        self.model = model
        self.mesh, self.batch_axis = mesh, batch_axis
        sharding.check_options(device, mesh, batch_axis, weight_sharding, direct)
        if mesh is not None:
            mesh = self.mesh = sharding.auto_axes(mesh)
            if targets is None:  # jax partitions XLA's ops; jaxlite's native kernels run on one device
                on_gpu = mesh.devices.flat[0].platform == "gpu"
                half = on_gpu if float16_compute is None else bool(float16_compute)
                targets, float16_compute, native_gemm = (["xla-float16"] if half else []) + ["xla"], None, True
            direct = False
            embed_weights_bytes = 0  # weights are arguments, placed with their sharding
        self.device = resolve_device(device)
        platform = (mesh.devices.flat[0].platform if mesh is not None else
                    self.device.platform if self.device is not None else jax.default_backend())
        if targets is not None and (float16_compute is not None or not native_gemm):
            raise DeviceError("give either targets= or native_gemm= / float16_compute=, not both "
                              "(targets= says it all: e.g. targets=['xla-float16', 'xla'])")
        self.float16_compute = platform == "gpu" if float16_compute is None else bool(float16_compute)
        self.targets = choose_targets(platform, targets, float16_compute=self.float16_compute, native=native_gemm)
        self.float16_compute = "xla-float16" in self.targets
        self.signature: Signature = model.signature
        main = find_main(model.module)
        lowering = Lowering(self.targets, model.weights)
        program = lowering.program(main.body.block)
        self.targets_used = lowering.targets_used()
        # name -> (bytes, producer of the host array, may be a constant): arrays derived at
        # load (expanded, packed) are made one at a time and dropped once on the device
        arrays = {name: (model.weights[name].nbytes, lambda n=name: model.weights[n], True)
                  for name in lowering.read_weights()}
        arrays.update(lowering.derived)
        budget = EMBED_WEIGHT_BYTES if embed_weights_bytes is None else int(embed_weights_bytes)
        self._shardings = (sharding.WeightShardings(mesh, weight_sharding, model.module, list(model.weights))
                           if mesh is not None else None)
        embedded, self._weights = self._place_all(arrays, budget, lowering, {} if placed is None else placed)
        self.array_names = frozenset(arrays)  # the weights and derived arrays it placed or reused

        sig = self.signature
        in_treedef = sig.in_treedef if sig.in_treedef is not None else builtin_treedef(sig)

        def run(weights, args):
            # structure, shape and dtype checks happen here, at trace time only
            leaves = input_leaves(args, sig, in_treedef)
            leaves = [_checked_leaf(x, spec, sig) for x, spec in zip(leaves, sig.inputs, strict=True)]
            return self._outputs(program({**embedded, **weights}, leaves))

        self._jitted = jax.jit(run)
        # A small program of native kernels only: called without XLA (runtime/host_plan.py)
        self._direct = None
        self._in_treedef = in_treedef
        self._input_specs = [(tuple(spec.shape), np.dtype(spec.dtype)) for spec in sig.inputs]
        self._single_output = sig.out_treedef is not None and jax.tree_util.treedef_is_leaf(sig.out_treedef)
        self._flat_inputs = takes_positional_arrays(in_treedef, len(sig.inputs))
        native_cpu = any(t.startswith("cpu-") for t in self.targets)
        if direct is not False and native_cpu and in_treedef is not None and worth_tracing(main.body.block):
            specs = sig.in_tree.unflatten([jax.ShapeDtypeStruct(s.shape, s.dtype) for s in sig.inputs])
            self._direct = HostPlan.build(run, self._weights, specs,
                                          known_leaves=len(jax.tree_util.tree_leaves(self._weights)))
        if direct and self._direct is None:
            raise DeviceError("direct=True: this model's program is not all native kernels on a CPU that runs "
                              "them (jaxlite doctor), or too big for one thread (see runtime/host_plan.py)")

    def _place_all(self, arrays: dict, budget: int, lowering: Lowering, placed: dict) -> tuple[dict, dict]:
        """(embedded, passed): weights on the device, the smallest embeddable ones first
        compiled in as constants until ``budget`` bytes are used, the rest passed as jit
        arguments; ``placed`` holds (and gets) the device arrays already made."""
        embedded: dict[str, jax.Array] = {}
        passed: dict[str, jax.Array] = {}
        for name in sorted(arrays, key=lambda n: (arrays[n][0], n)):
            nbytes, make, embeddable = arrays[name]
            target = embedded if nbytes <= budget and embeddable else passed
            budget -= nbytes if target is embedded else 0
            if name in placed:
                target[name] = placed[name]
                continue
            target[name] = placed[name] = self._place(make(), name, replicated=name in lowering.replicated)
            for source in lowering.take_weights_read():  # a derived array's sources: copied
                drop_pages(self.model.weights[source])
            if nbytes >= 1 << 20:
                release_freed_memory()  # the host copy (and packing scratch) of a big weight
        return embedded, passed

    def _place(self, array, name: str = "array", replicated: bool = False):
        if self._shardings is not None:
            spec = sharding.replicated(self._shardings.mesh) if replicated else self._shardings.sharding(name, array)
            placed = sharding.place(array, spec, f"weight {name}")
        else:
            placed = jax.device_put(array) if self.device is None else jax.device_put(array, self.device)
        if isinstance(array, np.memmap):
            placed.block_until_ready()
            drop_pages(array)
        return placed

    def _outputs(self, leaves: list) -> Any:
        """The output leaves in the function's output structure."""
        sig = self.signature
        if self._single_output:
            return leaves[0]
        if sig.out_treedef is not None:
            return jax.tree_util.tree_unflatten(sig.out_treedef, leaves)
        return sig.out_tree.unflatten(leaves)

    def describe_kernels(self) -> str:
        """Which targets serve how many of the model's ops, and whether calls skip XLA: e.g.
        ``cpu-onednn 21, xla 30; direct``."""
        served = ", ".join(f"{t} {n}" for t, n in sorted(self.targets_used.items(), key=lambda tn: -tn[1]))
        return f"{served}; {'direct' if self.direct else 'XLA program'}"

    @property
    def direct(self) -> bool:
        """Whether calls run the native kernels without XLA (results are numpy arrays)."""
        return self._direct is not None

    def _direct_leaves(self, args) -> list | None:
        """The input arrays when they are concrete and match the signature exactly (else the
        jitted path casts Python scalars, raises its SignatureError, or is traced)."""
        if self._flat_inputs and len(args) == len(self._input_specs):
            leaves = args  # positional arrays (the common case): no pytree flattening
        else:
            leaves, treedef = jax.tree_util.tree_flatten(args)
            if treedef != self._in_treedef:
                return None
        for x, (shape, dtype) in zip(leaves, self._input_specs, strict=True):
            if type(x) is not np.ndarray and (  # (the common case, checked fast)
                    not isinstance(x, np.ndarray | jax.Array) or isinstance(x, jax.core.Tracer)):
                return None  # tracers too: inside jit/vmap the program must stay traceable
            if x.shape != shape or x.dtype != dtype:
                return None
        return leaves

    def __call__(self, *args) -> Any:
        if self._direct is not None:
            if self._flat_inputs and (outs := self._direct.call_arrays(args)) is not None:
                return self._outputs(outs)
            if (leaves := self._direct_leaves(args)) is not None:
                return self._outputs(self._direct(leaves))
        if self.mesh is not None:
            args = self._on_mesh(args)
        try:
            return self._jitted(self._weights, args)
        except TypeError as e:
            if isinstance(e, SignatureError) or not any(
                    m in str(e) for m in ("as an abstract array", "not a valid JAX type")):
                raise
            raise SignatureError(f"arguments must be arrays: {_jax_type_error(e)}\n"
                                 f"  expected signature: ({self.signature.describe_inputs()})") from None

    def _on_mesh(self, args):
        """The arguments placed on the mesh: axis 0 split over the batch axis."""
        def put(x):
            if isinstance(x, jax.core.Tracer) or not hasattr(x, "shape"):
                return x
            return sharding.place(x, sharding.batch_sharding(self.mesh, self.batch_axis, len(x.shape)), "an input")
        return jax.tree_util.tree_map(put, args)

    def lower(self):
        """The jax Lowered object of the whole program (for inspecting the HLO)."""
        specs = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in self.signature.inputs]
        return self._jitted.lower(self._weights, self.signature.in_tree.unflatten(specs))


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS. glibc raises its mmap threshold after big
    frees, so the host copies of weights made at load (packed, expanded; MiBs each) land on
    the heap and stay resident after they are freed: 14 MiB over 32 MiB of int8 weights
    here, until trimmed."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def drop_pages(array) -> None:
    """Let the kernel drop the file pages of a memory-mapped weight we have copied, so the
    weights are resident once (they are re-read from the file if ever needed)."""
    mm = getattr(array, "_mmap", None)
    if isinstance(array, np.memmap) and mm is not None and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)


def input_leaves(args, sig: Signature, in_treedef) -> list:
    """The input arrays of ``args`` in signature order, or a SignatureError saying how the
    arguments' structure or count differs from the model's inputs."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    if treedef != in_treedef:
        try:
            leaves = sig.in_tree.flatten(args, "args")
        except ValueError as e:
            raise SignatureError(f"arguments do not match the model's inputs: {e}\n"
                                 f"  expected signature: ({sig.describe_inputs()})") from None
    if len(leaves) != len(sig.inputs):
        raise SignatureError(f"expected {len(sig.inputs)} input arrays, got {len(leaves)}\n"
                             f"  expected signature: ({sig.describe_inputs()})")
    return leaves


def takes_positional_arrays(in_treedef, count: int) -> bool:
    """Whether the inputs are ``count`` positional arrays (calls then need no flattening)."""
    return in_treedef is not None and in_treedef == jax.tree_util.tree_structure(tuple(range(count)))


def builtin_treedef(sig: Signature):
    """jax treedef of the input structure when it has only builtin containers, else None."""
    def has_custom(spec):
        return spec.kind in ("custom", "namedtuple") or any(has_custom(c) for c in spec.children)
    if has_custom(sig.in_tree):
        return None
    example = sig.in_tree.unflatten([0] * len(sig.inputs))
    return jax.tree_util.tree_structure(example)
