"""split-transposed-conv: a transposed convolution as stride**d ordinary ones ("sub-pixel").

flax's ConvTranspose (``lax.conv_transpose``) traces into a convolution over the input with
s - 1 zeros between its elements (``lhs_dilation`` s): in 2-D with s = 2, three of every
four multiply-adds read a zero. Output position ``o = s*q + r`` reads only the kernel taps
``t = t0 + s*m`` with ``t0 = (pad_low - r) mod s``, and those read input ``q + m + base``:
per phase r an ordinary stride-1 convolution of the undilated input with the kernel slice
``w[t0::s]``. This pass emits one such convolution per phase (kernel slices, which
canonicalize folds into weights: the taps are partitioned, so the weights keep their size)
and interleaves the results (concatenate + reshape, per spatial dim). The phases are
plain convolutions, so their bias and activation stay fused and quantization gives each
its own int8 kernel.

Measured with ``python benchmarks/transposed_conv.py`` (a 3-layer ConvTranspose decoder,
this project's 2-core CPU, pinned, ratio to jax.jit float32): float32 1.01 -> 0.71,
``dynamic`` 0.90 -> 0.32, ``int8`` 0.79 -> 0.31 (both cores: float 0.98, int8 0.47).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from jaxlite.dialects import fused, jlax
from jaxlite.dialects.params import encode
from jaxlite.dialects.types import shape_dtype, tensor_type
from jaxlite.passes.common import new_op


@dataclass(frozen=True)
class PhaseGeometry:
    """One output phase along one spatial dim: the kernel taps it reads and the padding
    that makes a stride-1 convolution over the undilated input produce its ``count``
    outputs."""
    first_tap: int
    taps: int
    padding: tuple[int, int]


def phase_geometry(size: int, kernel: int, stride: int, padding: tuple[int, int], phase: int,
                   count: int) -> PhaseGeometry:
    lo = padding[0]
    t0 = (lo - phase) % stride
    taps = -(-(kernel - t0) // stride)
    base = (phase + t0 - lo) // stride  # exact: phase + t0 - lo is a multiple of stride
    low = -base
    high = count - 1 + taps - size - low
    return PhaseGeometry(t0, taps, (low, high))


def _splittable(op: Operation) -> bool:
    if not (isinstance(op, jlax.LaxOp | fused.FusedConvOp) and op.PRIMITIVE == "conv_general_dilated"):
        return False
    p = op.params()
    dn = p["dimension_numbers"]
    kernel = shape_dtype(op.operands[1].type)[0]
    taps = [kernel[d] for d in dn.rhs_spec[2:]]
    if all(s == 1 for s in p["lhs_dilation"]) or any(s != 1 for s in p["window_strides"]) \
            or any(d != 1 for d in p["rhs_dilation"]) or p["batch_group_count"] != 1 \
            or any(k < s for k, s in zip(taps, p["lhs_dilation"], strict=True)):
        return False  # (a kernel narrower than the stride leaves phases with no tap: kept)
    if isinstance(op, fused.FusedConvOp) and op.bias is not None:
        out_shape = shape_dtype(op.result.type)[0]
        bias = (1,) * (len(out_shape) - len(op.bias.type.get_shape())) + tuple(op.bias.type.get_shape())
        if any(bias[d] != 1 for d in dn.out_spec[2:]):
            return False  # a bias that varies over positions would need slicing too
    return True


def split(op: Operation) -> None:
    """Replace the transposed convolution ``op`` (``_splittable``) by its phases."""
    p = op.params()
    dn = p["dimension_numbers"]
    x, w = op.operands[0], op.operands[1]
    x_shape = shape_dtype(x.type)[0]
    w_shape, w_dtype = shape_dtype(w.type)
    out_shape, out_dtype = shape_dtype(op.results[0].type)
    strides = tuple(p["lhs_dilation"])
    sizes = [x_shape[d] for d in dn.lhs_spec[2:]]
    kernels = [w_shape[d] for d in dn.rhs_spec[2:]]
    outs = [out_shape[d] for d in dn.out_spec[2:]]
    counts = [-(-o // s) for o, s in zip(outs, strides, strict=True)]
    new_ops: list[Operation] = []

    results: dict[tuple[int, ...], SSAValue] = {}
    for phase in itertools.product(*[range(s) for s in strides]):
        geo = [phase_geometry(n, k, s, tuple(pad), r, c) for n, k, s, pad, r, c
               in zip(sizes, kernels, strides, p["padding"], phase, counts, strict=True)]
        start, limit, step, w_sub = [0] * len(w_shape), list(w_shape), [1] * len(w_shape), list(w_shape)
        for d, g, s, k in zip(dn.rhs_spec[2:], geo, strides, kernels, strict=True):
            start[d], limit[d], step[d], w_sub[d] = g.first_tap, k, s, g.taps
        w_slice = new_op("slice", [w], w_sub, w_dtype, {"start_indices": tuple(start), "limit_indices": tuple(limit),
                                                      "strides": tuple(step)})
        phase_shape = list(out_shape)
        for d, c in zip(dn.out_spec[2:], counts, strict=True):
            phase_shape[d] = c
        attrs = dict(op.attributes)
        attrs["padding"] = encode(tuple(g.padding for g in geo))
        attrs["lhs_dilation"] = encode((1,) * len(strides))
        result_type = tensor_type(phase_shape, out_dtype)
        if isinstance(op, fused.FusedOp):
            conv = type(op)(x, w_slice.results[0], op.bias, result_type, attrs, op.activation)
        else:
            conv = type(op)([x, w_slice.results[0]], [result_type], attrs)
        new_ops += [w_slice, conv]
        results[phase] = conv.results[0]

    # interleave, one spatial dim at a time: phases (.., r_j, ..) -> axis a of size count * s
    shape = list(phase_shape)
    for axis, s in zip(dn.out_spec[2:], strides, strict=True):  # keys: phases of the dims not merged yet
        merged: dict[tuple[int, ...], SSAValue] = {}
        expanded = shape[:axis + 1] + [1] + shape[axis + 1:]
        stacked = shape[:axis + 1] + [s] + shape[axis + 1:]
        joined = shape[:axis] + [shape[axis] * s] + shape[axis + 1:]
        for rest in {k[1:] for k in results}:
            parts = []
            for r in range(s):
                part = new_op("reshape", [results[(r, *rest)]], expanded, out_dtype,
                            {"new_sizes": tuple(expanded), "dimensions": None})
                new_ops.append(part)
                parts.append(part.results[0])
            cat = new_op("concatenate", parts, stacked, out_dtype, {"dimension": axis + 1})
            flat = new_op("reshape", [cat.results[0]], joined, out_dtype, {"new_sizes": tuple(joined), "dimensions": None})
            new_ops += [cat, flat]
            merged[rest] = flat.results[0]
        results, shape = merged, joined
    value = results[()]
    if tuple(shape) != tuple(out_shape):  # outputs not a multiple of the stride: the last phases ran long
        crop = new_op("slice", [value], out_shape, out_dtype,
                    {"start_indices": (0,) * len(shape), "limit_indices": tuple(out_shape), "strides": None})
        new_ops.append(crop)
        value = crop.results[0]
    Rewriter.insert_op(new_ops, InsertPoint.before(op))
    op.results[0].replace_all_uses_with(value)
    op.detach()
    op.erase()


@dataclass(frozen=True)
class SplitTransposedConvPass(ModulePass):
    name = "split-transposed-conv"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for candidate in [o for o in op.walk() if _splittable(o)]:
            split(candidate)

