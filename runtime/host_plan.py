"""HostPlan: a program of jaxlite's native kernels called straight from Python, without XLA.

For a model as small as the digits MLP (three int8 GEMMs, ~1M multiply-adds) XLA's per-call
cost -- argument handling, result allocation, thunk dispatch, on top of jax's dispatch -- is
most of the time (figures: docs/ARCHITECTURE.md). When the jitted program is
nothing but jaxlite's custom calls and reshapes, the same kernels are called here through
ctypes (their ``JaxliteDirect<Name>`` entry points, ``runtime/native/bindings.h``) on
buffers allocated once: each call copies the inputs in, runs the kernels in order on the
calling thread and returns copies of the outputs as numpy arrays, as LiteRT's interpreter
does. The plan is read from the program's jaxpr, so it runs exactly what XLA would run
(identical results, tested); anything else in the jaxpr and ``build`` returns None.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.extend.core import Literal

from jaxlite.dialects import fused, jlax, quant
from jaxlite.runtime import native_calls

try:  # the checks, copies and kernel calls of ``__call__`` in C (native/direct_call.c)
    from jaxlite.runtime import _direct_call
except ImportError:  # an install without the native build
    _direct_call = None
from jaxlite.runtime.gemm_layout import gemm_shape, weight_source

# Only programs up to this many multiply-adds: the kernels run on one thread here, where XLA
# would split big GEMMs over its pool; below it XLA's per-call cost is the larger share.
MAX_MACS = 8 << 20
# ... or this many where the process may run on one core only (pinned): there XLA's pool has
# nothing to split over, so only its per-call cost differs, and beyond this it is too small a
# share to trace a program for at every compile.
MAX_MACS_ONE_CORE = 64 << 20
# ... and buffers (intermediates, inputs, outputs) up to this many bytes.
MAX_ARENA_BYTES = 64 << 20

# XLA_FFI_DataType of the dtypes the kernels take
_FFI_DTYPES = {np.dtype(np.int8): 2, np.dtype(np.int32): 4, np.dtype(np.float32): 11}
# kernels whose operand 1 is a packed weight [Kp * Npad]: rows x its size multiply-adds
_GEMM_KERNELS = ("QuantizedGemm", "DynamicGemm", "QuantizedConv", "DynamicConv")
# the float kernels (oneDNN's, FloatGemm): operand 1 is a packed weight (padded: K x N or more)
_FLOAT_KERNELS = ("OnednnMatmul", "OnednnConv", "FloatGemm")
# primitives that only relabel a row-major buffer's shape
_VIEWS = ("reshape", "squeeze", "expand_dims")


class _Step(ctypes.Structure):
    """One kernel call of the plan (``DirectStep`` in native/direct_run.cc)."""
    _fields_ = [("fn", ctypes.c_void_p), ("count", ctypes.c_int64), ("data", ctypes.POINTER(ctypes.c_void_p)),
                ("dtypes", ctypes.POINTER(ctypes.c_int32)), ("ranks", ctypes.POINTER(ctypes.c_int64)),
                ("dims", ctypes.POINTER(ctypes.c_int64)), ("iattr", ctypes.POINTER(ctypes.c_int64)),
                ("n_iattr", ctypes.c_int64), ("fattr", ctypes.POINTER(ctypes.c_float)), ("n_fattr", ctypes.c_int64)]


class NotDirect(Exception):
    """The program has something the plan cannot run (the reason is the message)."""


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised array at a 64-byte boundary with 64 bytes of slack after it, as XLA
    allocates buffers (the kernels' masked vector loads never need more)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class HostPlan:
    """``plan(leaves)``: the program's outputs (numpy) for its input arrays, in order."""

    def __init__(self, closed_jaxpr, known: dict[int, Any]):
        """``known``: invar position -> value (weights passed to the jitted function); the
        other invars are the inputs."""
        if not native_calls.LOADED:
            raise NotDirect("no native kernels")
        self._library = native_calls.LOADED[0]  # any library's DirectRun calls any kernel
        self._keep: list = []  # arrays whose memory the steps point to
        self._steps: list[tuple] = []
        self._macs = 0
        self._arena_bytes = 0
        jaxpr = closed_jaxpr.jaxpr
        env: dict = {}
        self._inputs = []
        for i, var in enumerate(jaxpr.invars):
            if i in known:
                env[var] = self._constant(known[i])
            else:
                env[var] = self._buffer(var.aval)
                self._inputs.append(env[var])
        for var, value in zip(jaxpr.constvars, closed_jaxpr.consts, strict=True):
            env[var] = self._constant(value)
        self._walk(jaxpr, env)
        self._outputs = [self._read(env, v) for v in jaxpr.outvars]
        if self._macs > max_macs():
            raise NotDirect(f"{self._macs} multiply-adds (> {max_macs()}): XLA's threads pay off")
        if self._arena_bytes > MAX_ARENA_BYTES:
            raise NotDirect(f"{self._arena_bytes} bytes of buffers (> {MAX_ARENA_BYTES})")
        self._program = (_Step * max(1, len(self._steps)))(*[_Step(*step) for step in self._steps])
        self._run = self._library.run
        self._program_pointer = ctypes.c_void_p(ctypes.addressof(self._program))  # converted once
        self._count = len(self._steps)
        self._lock = threading.Lock()
        fits_c = len(self._inputs) <= 16 and all(b.ndim <= 8 for b in self._inputs)  # direct_call.c's limits
        self._fast = None if _direct_call is None or not fits_c else _direct_call.prepare(
            ctypes.cast(self._run, ctypes.c_void_p).value, ctypes.addressof(self._program), self._count,
            tuple((b.ctypes.data, b.nbytes, memoryview(b).format, b.shape) for b in self._inputs),
            tuple(self._outputs), (np.ndarray, type(jax.numpy.zeros(()))), self._lock)

    @classmethod
    def build(cls, fn, *example_args, known_leaves: int = 0) -> HostPlan | None:
        """The plan of ``fn`` traced at ``example_args`` (their first ``known_leaves``
        leaves are fixed values: the weights), or None when it cannot run directly."""
        leaves = jax.tree_util.tree_leaves(example_args)
        try:
            closed = jax.make_jaxpr(fn)(*example_args)
            return cls(closed, {i: leaves[i] for i in range(known_leaves)})
        except NotDirect:
            return None

    def _constant(self, value) -> np.ndarray:
        if isinstance(value, jax.Array):
            self._keep.append(value)  # a view of its (64-byte aligned) device buffer
            return np.asarray(value)
        value = np.asarray(value)
        copy = aligned_empty(value.shape, value.dtype)
        copy[...] = value
        return copy

    def _buffer(self, aval) -> np.ndarray:
        buffer = aligned_empty(aval.shape, aval.dtype)
        self._arena_bytes += buffer.nbytes
        return buffer

    @staticmethod
    def _read(env: dict, var) -> np.ndarray:
        if isinstance(var, Literal):
            return np.asarray(var.val)
        return env[var]

    def _walk(self, jaxpr, env: dict) -> None:
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            ins = [self._read(env, v) for v in eqn.invars]
            if name == "ffi_call":
                outs = self._ffi_step(eqn, ins)
            elif name in _VIEWS or (name == "broadcast_in_dim" and _is_view(eqn)):
                outs = [ins[0].reshape(eqn.outvars[0].aval.shape)]
            elif name in ("pjit", "jit"):
                inner = eqn.params["jaxpr"]
                inner_env = dict(zip(inner.jaxpr.invars, ins, strict=True))
                inner_env.update(zip(inner.jaxpr.constvars, map(self._constant, inner.consts), strict=True))
                self._walk(inner.jaxpr, inner_env)
                outs = [self._read(inner_env, v) for v in inner.jaxpr.outvars]
            else:
                raise NotDirect(f"primitive {name}")
            for var, value in zip(eqn.outvars, outs, strict=True):
                env[var] = value

    def _ffi_step(self, eqn, ins: list[np.ndarray]) -> list[np.ndarray]:
        params = eqn.params
        target = params["target_name"]
        kernel = native_calls.kernel_by_target(target)
        if kernel is None:
            raise NotDirect(f"custom call {target}")
        outs = [self._buffer(aval) for aval in params["result_avals"]]
        buffers = [*ins, *outs]
        if not all(b.flags.c_contiguous for b in buffers):
            raise NotDirect(f"{target} on a strided operand")
        if any(b.dtype not in _FFI_DTYPES for b in buffers):
            raise NotDirect(f"{target} on dtypes {[str(b.dtype) for b in buffers]}")
        attributes = dict(params["attributes"] or ())
        try:
            iattr, fattr = kernel.direct_attributes(attributes)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise NotDirect(f"{target}: attributes {e}") from None
        if kernel.name in _GEMM_KERNELS:
            self._macs += outs[0].shape[0] * ins[1].size
        elif kernel.name in ("DynamicActGemm", "FloatActGemm"):
            self._macs += int(np.prod(np.asarray(getattr(attributes["sizes"], "val", attributes["sizes"]))))
        elif kernel.name in _FLOAT_KERNELS:  # out elements x (K = the packed weight's values / N)
            n, value_bytes = outs[0].shape[-1], 2 if _int_attribute(attributes, "weights") == 1 else 4
            self._macs += outs[0].size * (ins[1].nbytes // value_bytes // n)
        self._keep.extend(buffers)
        dims = [d for b in buffers for d in b.shape]
        args = (len(buffers),
                (ctypes.c_void_p * len(buffers))(*[b.ctypes.data for b in buffers]),
                (ctypes.c_int32 * len(buffers))(*[_FFI_DTYPES[b.dtype] for b in buffers]),
                (ctypes.c_int64 * len(buffers))(*[b.ndim for b in buffers]),
                (ctypes.c_int64 * max(1, len(dims)))(*dims),
                (ctypes.c_int64 * max(1, len(iattr)))(*iattr), len(iattr),
                (ctypes.c_float * max(1, len(fattr)))(*fattr), len(fattr))
        self._keep.append(args)
        self._steps.append((kernel.direct, *args))
        return outs

    def call_arrays(self, arrays: tuple) -> list[np.ndarray] | None:
        """``self(arrays)`` in one C call where ``arrays`` are exactly numpy or (CPU) jax
        arrays of the inputs' shapes and dtypes, C-contiguous, and no other call is running;
        else None."""
        return None if self._fast is None else _direct_call.call(self._fast, arrays)

    def __call__(self, leaves: Sequence[Any]) -> list[np.ndarray]:
        with self._lock:  # the buffers are the plan's: one call at a time
            for buffer, x in zip(self._inputs, leaves, strict=True):
                buffer[...] = x
            error = self._run(self._program_pointer, self._count)
            if error is not None:
                raise RuntimeError(f"jaxlite native kernel: {error.decode()}")
            return [out.copy() for out in self._outputs]


def usable_cores() -> int:
    """The cores this process may run on (its affinity), as the kernels count them
    (native/common.h usable_threads)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def max_macs() -> int:
    """The most multiply-adds of a program the plan runs: MAX_MACS, or MAX_MACS_ONE_CORE
    where the process has one core."""
    return MAX_MACS_ONE_CORE if usable_cores() == 1 else MAX_MACS


def worth_tracing(block) -> bool:
    """Whether a program might qualify, judged from its IR without tracing it (tracing a
    ResNet-18 for nothing would add to every compile): native int8 matmuls only among its
    dots and convolutions, at most ``max_macs()`` multiply-adds."""
    macs = 0
    for op in block.ops:
        out = int(np.prod(op.results[0].type.get_shape())) if op.results else 0
        if isinstance(op, quant.QuantizedMatmulOp):
            shape = gemm_shape(op)
            if shape is None:
                return False
            macs += out * shape[0]
        elif isinstance(op, quant.DynamicActDotOp):
            lhs = op.lhs.type.get_shape()
            macs += out * int(np.prod([lhs[d] for d in op.dot_dims().lhs_contract]))
        elif isinstance(op, fused.FusedOp) or (
                isinstance(op, jlax.LaxOp) and op.PRIMITIVE in ("dot_general", "conv_general_dilated")):
            if weight_source(op, None, keep_bfloat16=False) is None:
                return False  # a product of two activations: XLA's
            macs += out * _reduced_size(op)  # a float matmul: oneDNN's where that target runs
        elif isinstance(op, jlax.RegionOp):
            return False  # loops and branches stay in XLA
    return 0 < macs <= max_macs()


def _int_attribute(attributes: dict, name: str) -> int:
    value = attributes.get(name, 0)
    return int(np.asarray(getattr(value, "val", value)).reshape(-1)[0])


def _reduced_size(op) -> int:
    """Multiply-adds per output element of a float dot or convolution."""
    lhs, rhs = op.operands[0].type.get_shape(), op.operands[1].type.get_shape()
    if op.PRIMITIVE == "dot_general":
        return int(np.prod([lhs[d] for d in op.dot_dims().lhs_contract]))
    return int(np.prod(rhs)) // rhs[op.conv_dims().rhs_spec[0]]


def _is_view(eqn) -> bool:
    """A broadcast_in_dim that only inserts size-1 axes (a reshape)."""
    aval_in, aval_out = eqn.invars[0].aval, eqn.outvars[0].aval
    dims = eqn.params["broadcast_dimensions"]
    return aval_in.size == aval_out.size and list(dims) == sorted(dims)
