"""Executable: a compiled model, callable like the function it was converted from.

The whole program is one ``jax.jit``. Weights are placed on the device once. Small ones are
closed over (XLA embeds them as constants: each argument costs ~3 us of dispatch here, a
tiny model would pay more for its weights than for its math, and XLA prepares constant
kernels at compile time: ResNet-18's 45 MB embedded ran 41.2 ms against 45.2 ms as
arguments, jax.jit 44.0 ms, one thread); the rest are passed as arguments, since embedding
a 400 MB model took 7.4 s to compile and +1.1 GB of memory against 0.18 s as arguments,
and embedded weights stay resident twice (a 64 MiB budget doubled a quantized model's
steady RSS). ``embed_weights_bytes`` moves the line. The call path checks the arguments against the signature
(one pytree flatten and a shape/dtype compare) and calls the jitted function.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
from typing import Any

import jax
import numpy as np

from jaxlite.dialects.jlax import WeightOp
from jaxlite.dialects.module import find_main
from jaxlite.dialects.signature import Signature, TensorSpec
from jaxlite.errors import DeviceError, SignatureError
from jaxlite.runtime import native
from jaxlite.runtime.kernels import program_for

# Weights are embedded as constants, smallest first, up to this many bytes in all.
EMBED_WEIGHT_BYTES = 16 * 1024 * 1024
# ... but a weight packed for the native int8 kernel only while it is at most this big:
# XLA does nothing with a custom call's constant operand, so embedding saves only the
# argument's dispatch (~1 us each) and keeps the bytes resident twice (a 67M-parameter
# dynamic model: steady RSS 1.9x its int8 weights embedded, 1.0x passed).
EMBED_PACKED_MAX_BYTES = 1024 * 1024


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
    import re

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


class Executable:
    """``exe(*args)`` runs the model; ``exe.model`` is the Model it came from."""

    def __init__(self, model, device=None, float16_compute: bool | None = None,
                 embed_weights_bytes: int | None = None, native_gemm: bool = True, direct: bool | None = None):
        """Options as in ``Model.compile``: ``float16_compute`` (f16 math on f16 weights;
        default on GPU), ``embed_weights_bytes`` (constants budget), ``native_gemm`` (the
        VNNI int8 kernel on CPU), ``direct`` (small native programs without XLA)."""
        self.model = model
        self.device = resolve_device(device)
        on_gpu = self.device is not None and self.device.platform == "gpu"
        self.float16_compute = on_gpu if float16_compute is None else bool(float16_compute)
        self.signature: Signature = model.signature
        main = find_main(model.module)
        # Weights stored in low precision but used as float (int8-weights, float16 on CPU)
        # are expanded once here, the way TFLite does at load, not on every call.
        expanded = _load_time_values(main, model.weights, expand_f16=not self.float16_compute)
        on_cpu = (self.device.platform if self.device is not None else jax.default_backend()) == "cpu"
        packed = _packed_weights(main, model.weights) if on_cpu and native_gemm else {}
        native_cpu = on_cpu and native_gemm and native.available()
        program = program_for(main.body.block,
                              lambda op: _expanded_kernel(op, expanded, self.float16_compute, packed, native_cpu))
        used = {op.weight_name for op in main.walk() if isinstance(op, WeightOp)
                and not _only_replaced_uses(op, expanded, packed)}
        # name -> (bytes, producer of the host array): arrays derived at load (expanded,
        # packed) are made one at a time and dropped once on the device
        arrays = {name: (model.weights[name].nbytes, lambda n=name: model.weights[n]) for name in used}
        arrays.update({name: (nbytes, make) for name, nbytes, make in expanded.values()})
        for (p_name, c_name), (k, n), make in packed.values():
            arrays[p_name] = (-(-k // 4) * 4 * -(-n // 32) * 32, functools.partial(make, 0))
            arrays[c_name] = (4 * n, functools.partial(make, 1))
        budget = EMBED_WEIGHT_BYTES if embed_weights_bytes is None else int(embed_weights_bytes)
        big_packed = {p_name for (p_name, _), _, _ in packed.values() if arrays[p_name][0] > EMBED_PACKED_MAX_BYTES}
        embedded, self._weights = self._place_all(arrays, budget, never_embed=big_packed)
        for op, (names, shape, _make) in list(packed.items()):  # drop the weights' references
            packed[op] = (names, shape, None)

        sig = self.signature
        in_treedef = sig.in_treedef if sig.in_treedef is not None else _builtin_treedef(sig)

        def run(weights, args):
            # structure, shape and dtype checks happen here, at trace time only
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
            leaves = [_checked_leaf(x, spec, sig) for x, spec in zip(leaves, sig.inputs, strict=True)]
            return self._outputs(program({**embedded, **weights}, leaves))

        self._jitted = jax.jit(run)
        # A small program of native kernels only: called without XLA (runtime/host_plan.py)
        self._direct = None
        if direct is not False and native_cpu and in_treedef is not None:
            from jaxlite.runtime.host_plan import HostPlan, worth_tracing

            if worth_tracing(main.body.block):
                specs = sig.in_tree.unflatten([jax.ShapeDtypeStruct(s.shape, s.dtype) for s in sig.inputs])
                self._direct = HostPlan.build(run, self._weights, specs,
                                              known_leaves=len(jax.tree_util.tree_leaves(self._weights)))
            self._in_treedef = in_treedef
        if direct and self._direct is None:
            raise DeviceError("direct=True: this model's program is not all native kernels on a CPU with "
                              "AVX-512 VNNI, or too big for one thread (see runtime/host_plan.py)")

    def _place_all(self, arrays: dict, budget: int, never_embed=frozenset()) -> tuple[dict, dict]:
        """(embedded, passed): weights on the device, the smallest first compiled in as
        constants until ``budget`` bytes are used, the rest (and ``never_embed``) passed as
        jit arguments."""
        embedded: dict[str, jax.Array] = {}
        passed: dict[str, jax.Array] = {}
        for name in sorted(arrays, key=lambda n: (arrays[n][0], n)):
            nbytes, make = arrays[name]
            target = embedded if nbytes <= budget and name not in never_embed else passed
            budget -= nbytes if target is embedded else 0
            target[name] = self._place(make())
            if nbytes >= 1 << 20:
                release_freed_memory()  # the host copy (and packing scratch) of a big weight
        return embedded, passed

    def _place(self, array):
        placed = jax.device_put(array) if self.device is None else jax.device_put(array, self.device)
        if isinstance(array, np.memmap):
            placed.block_until_ready()
            drop_pages(array)
        return placed

    def _outputs(self, leaves: list) -> Any:
        """The output leaves in the function's output structure."""
        sig = self.signature
        if sig.out_treedef is not None:
            return jax.tree_util.tree_unflatten(sig.out_treedef, leaves)
        return sig.out_tree.unflatten(leaves)

    @property
    def direct(self) -> bool:
        """Whether calls run the native kernels without XLA (results are numpy arrays)."""
        return self._direct is not None

    def _direct_leaves(self, args) -> list | None:
        """The input arrays when they are concrete and match the signature exactly (else the
        jitted path casts Python scalars, raises its SignatureError, or is traced)."""
        leaves, treedef = jax.tree_util.tree_flatten(args)
        if treedef != self._in_treedef:
            return None
        for x, spec in zip(leaves, self.signature.inputs, strict=True):
            if not isinstance(x, np.ndarray | jax.Array) or isinstance(x, jax.core.Tracer) \
                    or x.shape != spec.shape or x.dtype != spec.dtype:
                return None  # tracers too: inside jit/vmap the program must stay traceable
        return leaves

    def __call__(self, *args) -> Any:
        if self._direct is not None and (leaves := self._direct_leaves(args)) is not None:
            return self._outputs(self._direct(leaves))
        try:
            return self._jitted(self._weights, args)
        except TypeError as e:
            if isinstance(e, SignatureError) or not any(
                    m in str(e) for m in ("as an abstract array", "not a valid JAX type")):
                raise
            raise SignatureError(f"arguments must be arrays: {_jax_type_error(e)}\n"
                                 f"  expected signature: ({self.signature.describe_inputs()})") from None

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


def _load_time_values(main, weights, expand_f16: bool) -> dict:
    """op -> (name, bytes, function making the float32 array) for dequantize/upcast ops
    that read only weights."""
    from jaxlite.dialects import quant

    out = {}
    for op in main.walk():  # loop bodies too: their kernels come from the same chooser
        if isinstance(op, quant.DequantizeOp | quant.UpcastOp):
            if isinstance(op, quant.UpcastOp) and not expand_f16:
                continue
            sources = [v.owner for v in op.operands]
            if not all(isinstance(w, WeightOp) for w in sources):
                continue
            names = [w.weight_name for w in sources]
            axis = op.attributes["axis"].data if isinstance(op, quant.DequantizeOp) else None

            def make(names=names, axis=axis):
                sources = [weights[n] for n in names]
                arrays = [np.asarray(a) for a in sources]
                if axis is None:
                    value = arrays[0].astype(np.float32)
                else:
                    q, scale = arrays
                    shape = [1] * q.ndim
                    if axis >= 0:
                        shape[axis] = -1
                    value = q.astype(np.float32) * scale.reshape(shape if axis >= 0 else ())
                for a in sources:
                    drop_pages(a)
                return value

            nbytes = int(np.prod(weights[names[0]].shape)) * 4
            out[op] = (f"{names[0]}@float32", nbytes, make)
    return out


def _only_replaced_uses(weight: WeightOp, expanded, packed) -> bool:
    """Whether every reader of a weight gets it another way: from an array expanded at load,
    or (the int8 kernel, operand 1, of a native GEMM) from its packed copy."""
    uses = weight.result.uses
    return bool(uses) and all(u.operation in expanded or (u.operation in packed and u.index == 1)
                              for u in uses)


def _packed_weights(main, weights) -> dict:
    """op -> ((packed name, colsum name), (K, N), make) for int8 matmuls on a weight that the
    native VNNI GEMM can run; ``make()`` packs it (at placement, one weight at a time)."""
    from jaxlite.dialects import quant
    from jaxlite.runtime.quant_kernels import gemm_shape, weight_2d

    if not native.available():
        return {}
    out = {}
    for op in main.walk():
        if not isinstance(op, quant.QuantizedMatmulOp) or not isinstance(op.rhs.owner, WeightOp):
            continue
        shape = gemm_shape(op)
        if shape is None:
            continue
        name = op.rhs.owner.weight_name

        def make(part: int, op=op, name=name):  # 0: packed weight, 1: column sums
            w2d = weight_2d(op, np.asarray(weights[name]))
            made = native.packed_weight(w2d) if part == 0 else native.column_sums(w2d)
            drop_pages(weights[name])
            return made

        out[op] = ((f"{name}@vnni", f"{name}@colsum"), shape, make)
    return out


def _expanded_kernel(op, expanded, float16_compute: bool = False, packed=None, native_cpu: bool = False):
    from jaxlite.dialects import quant
    from jaxlite.runtime.kernels import float16_matmul_kernel, kernel_for
    from jaxlite.runtime.native_kernels import (
        native_act_dot_kernel,
        native_kernel,
        native_max_pool_kernel,
        native_row_kernel,
    )

    packed = packed or {}
    if float16_compute and (kernel := float16_matmul_kernel(op)) is not None:
        return kernel
    if op in packed:
        (p_name, c_name), (_k, n), _ = packed[op]
        return native_kernel(op, p_name, c_name, n)
    if native_cpu and isinstance(op, quant.DynamicActDotOp):
        return native_act_dot_kernel(op)
    if native_cpu and (pool := native_max_pool_kernel(op)) is not None:
        return pool
    if native_cpu and (row_op := native_row_kernel(op)) is not None:
        return row_op
    if op in expanded:
        name = expanded[op][0]
        return lambda weights, *_: (weights[name],)
    if isinstance(op, WeightOp) and _only_replaced_uses(op, expanded, packed):
        return lambda weights: (None,)  # only read by expanded ops: never placed on the device
    return kernel_for(op)


def _builtin_treedef(sig: Signature):
    """jax treedef of the input structure when it has only builtin containers, else None."""
    def has_custom(spec):
        return spec.kind in ("custom", "namedtuple") or any(has_custom(c) for c in spec.children)
    if has_custom(sig.in_tree):
        return None
    example = sig.in_tree.unflatten([0] * len(sig.inputs))
    return jax.tree_util.tree_structure(example)
