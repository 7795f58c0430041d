"""unroll-layer-scans: a ``lax.scan`` over stacked layer weights becomes one copy of its
body per layer.

Models with many identical layers are often written as a scan over weights stacked along a
leading layer axis (Equinox's recommended pattern, flax ``nn.scan``): inside the body each
layer's kernel is a slice of the stack, i.e. an activation as far as the passes can tell.
Quantization then kept the stack in float32 (no smaller file) and quantized the slices
again on every call. Unrolled, every layer reads ``slice(stack, i)``, which canonicalize
folds into a weight of its own: the layers fuse, quantize and pack like unrolled ones.

Only scans that read a weight as a scanned operand are unrolled (time-step loops, which
scan over activations, are left alone), and only up to ``MAX_LAYERS`` iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from jaxlite.dialects import jlax
from jaxlite.dialects.types import shape_dtype
from jaxlite.passes.common import new_op

MAX_LAYERS = 64


def _unrollable(op: Operation) -> bool:
    if not isinstance(op, jlax.ScanOp):
        return False
    nconst, ncarry, length = op.num_consts, op.num_carry, op.length
    xs = op.operands[nconst + ncarry:]
    return isinstance(length, int) and 0 < length <= MAX_LAYERS and any(isinstance(x.owner, jlax.WeightOp) for x in xs)


def unroll(scan: jlax.ScanOp) -> None:
    nconst, ncarry, length = scan.num_consts, scan.num_carry, scan.length
    operands = list(scan.operands)
    consts, carry, xs = operands[:nconst], operands[nconst:nconst + ncarry], operands[nconst + ncarry:]
    block = scan.body.block
    args = list(block.args)
    terminator = block.last_op
    new_ops: list[Operation] = []
    ys_at: dict[int, list[SSAValue]] = {}
    for i in (reversed(range(length)) if scan.reverse else range(length)):
        mapping: dict[SSAValue, SSAValue] = dict(zip(args[:nconst + ncarry], consts + carry, strict=True))
        for arg, x in zip(args[nconst + ncarry:], xs, strict=True):
            shape, dtype = shape_dtype(x.type)
            row = new_op("slice", [x], (1, *shape[1:]), dtype,
                       {"start_indices": (i, *[0] * (len(shape) - 1)), "limit_indices": (i + 1, *shape[1:]),
                        "strides": None})
            item = new_op("reshape", [row.results[0]], shape[1:], dtype, {"new_sizes": tuple(shape[1:]), "dimensions": None})
            new_ops += [row, item]
            mapping[arg] = item.results[0]
        for op in block.ops:
            if op is terminator:
                break
            new_ops.append(op.clone(value_mapper=mapping))
        outs = [mapping.get(v, v) for v in terminator.operands]
        carry, ys_at[i] = outs[:ncarry], outs[ncarry:]
    results = list(carry)
    for j, y_type in enumerate(r.type for r in scan.results[ncarry:]):
        shape, dtype = shape_dtype(y_type)
        rows = []
        for i in range(length):
            row = new_op("reshape", [ys_at[i][j]], (1, *shape[1:]), dtype,
                       {"new_sizes": (1, *shape[1:]), "dimensions": None})
            new_ops.append(row)
            rows.append(row.results[0])
        stacked = new_op("concatenate", rows, shape, dtype, {"dimension": 0})
        new_ops.append(stacked)
        results.append(stacked.results[0])
    Rewriter.insert_op(new_ops, InsertPoint.before(scan))
    for old, new in zip(scan.results, results, strict=True):
        old.replace_all_uses_with(new)
    scan.detach()
    scan.erase()


@dataclass(frozen=True)
class UnrollLayerScansPass(ModulePass):
    name = "unroll-layer-scans"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        # one at a time: unrolling copies (and drops) the scans nested in a body
        while (scan := next((o for o in op.walk() if _unrollable(o)), None)) is not None:
            unroll(scan)
