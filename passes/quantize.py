"""quantize: lower precision for weights and (in int8 mode) activations.

Modes (symmetric int8: scale = max|w| / 127, q = clip(round(w / scale), -127, 127),
zero point 0; per output channel by default):

* ``float16``      every float32 weight stored as float16, read through ``jquant.upcast``.
* ``bfloat16``     likewise in bfloat16 (float32's exponent range, 8 bits of mantissa); CPUs
  with bfloat16 arithmetic and GPUs compute the dots and convolutions in it.
* ``int8-weights`` dot/conv kernels stored int8 + float32 scales, read through
  ``jquant.dequantize`` (the runtime turns them back into floats once, at load).
* ``dynamic``      dot/conv become ``jquant.dynamic_dot/conv``: int8 kernels, activations
  quantized on the fly, int8 x int8 -> int32; dots between two activations (attention)
  become ``jquant.dynamic_act_dot``, both sides quantized on the fly.
* ``int8``         with activation ranges from calibration: dot/conv become
  ``jquant.qdot/qconv`` between ``jquant.quantize`` / ``jquant.dequantize``; then
  dequantize moves down through ops that commute with it (reshape, transpose, max-pool,
  relu, concatenate, slice, ...) and cancels against the next quantize of the same scale,
  so int8 values flow from layer to layer and float appears only where an op has no int8
  kernel; a dequantize still right after a qdot/qconv that nothing else reads becomes the
  op's float result (its epilogue writes float: no requantize), and a quantize read only
  by one folds into it (the op takes float and quantizes as it reads). A dequantize that
  sank from a qdot/qconv only through reshapes and transposes moves back up first, so such
  a chain ends in float too (attention's Q, K and V, read in float by the dots between
  them). Dots between two activations become ``jquant.dynamic_act_dot`` as in dynamic mode.

``skip`` holds fnmatch patterns of kernel weight names or op names kept in float
(``jquant.dynamic_act_dot`` keeps every dot between two activations in float).
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass

import ml_dtypes
import numpy as np
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.rewriter import InsertPoint, Rewriter
from xdsl.transforms.dead_code_elimination import dce

from jaxlite.dialects import fused, jlax, quant
from jaxlite.dialects.int8 import activation_scale, quantize_weight
from jaxlite.dialects.types import shape_dtype, tensor_type
from jaxlite.dialects.weights import WeightStore
from jaxlite.errors import ConversionError
from jaxlite.passes.common import ModelPass, producer, splat_value, users

MODES = ("float16", "bfloat16", "int8-weights", "dynamic", "int8")
_MATMULS = ("dot_general", "conv_general_dilated")


def kernel_axis(op: Operation) -> int | None:
    """The kernel's output-feature axis (per-channel scales run along it), or None when
    the op is not a plain weight matmul (batched dots between activations)."""
    axes = op.feature_axes()
    return axes[1][-1] if axes is not None else None


class SkipPatterns:
    """The ``skip`` patterns of one quantize run, remembering which matched something."""

    def __init__(self, patterns: tuple[str, ...]):
        self.patterns = patterns
        self.used: set[str] = set()

    def __call__(self, *names: str) -> bool:
        """Whether any pattern matches any of ``names`` (a weight name, an op name)."""
        hits = {p for p in self.patterns for name in names if fnmatch.fnmatchcase(name, p)}
        self.used |= hits
        return bool(hits)

    def warn_unused(self) -> None:
        for pattern in self.patterns:
            if pattern not in self.used:
                warnings.warn(f"quantize: skip pattern {pattern!r} matches no weight or op name of this model "
                              "(see jaxlite summary or model.weights for the names)", UserWarning, stacklevel=2)


def _candidates(module: ModuleOp, skip: SkipPatterns):
    for op in list(module.walk()):
        is_matmul = (isinstance(op, fused.FusedOp) or (isinstance(op, jlax.LaxOp) and op.PRIMITIVE in _MATMULS))
        if not is_matmul:
            continue
        w = producer(op.operands[1])
        if not isinstance(w, jlax.WeightOp) or shape_dtype(w.result.type)[1] != np.float32:
            continue
        if shape_dtype(op.operands[0].type)[1] != np.float32:
            continue
        if skip(w.weight_name, op.name):
            continue
        axis = kernel_axis(op)
        if axis is None:
            continue
        yield op, w, axis


def activation_dots(module: ModuleOp):
    """dot_generals between two float32 values that are not weights (attention's QK^T and
    PV), in program order: the report matches them across models by this order."""
    for op in module.walk():
        if isinstance(op, jlax.LaxOp) and op.PRIMITIVE == "dot_general" \
                and all(shape_dtype(v.type)[1] == np.float32 for v in op.operands) \
                and not any(isinstance(producer(v), jlax.WeightOp) for v in op.operands):
            yield op


def _quantized_kernel(store: WeightStore, w: jlax.WeightOp, axis: int,
                      per_channel: bool) -> tuple[SSAValue, SSAValue, int, list[Operation]]:
    q, scale = quantize_weight(store[w.weight_name], axis if per_channel else None)
    name = w.weight_name
    q_op = jlax.WeightOp(store.add(q, name + ".q"), tensor_type(q.shape, np.int8))
    s_op = jlax.WeightOp(store.add(scale, name + ".scale"), tensor_type(scale.shape, np.float32))
    return q_op.result, s_op.result, (axis if per_channel else -1), [q_op, s_op]


def _parts(op: Operation) -> tuple[dict, SSAValue | None, str]:
    """(primitive attributes, bias, activation) of a dot/conv, fused or not."""
    if isinstance(op, fused.FusedOp):
        return dict(op.attributes), op.bias, op.activation
    return dict(op.attributes), None, "none"


def _scalar(value: float) -> jlax.ConstantOp:
    return jlax.ConstantOp.from_array(np.asarray(value, np.float32))


@dataclass(frozen=True)
class QuantizePass(ModelPass):
    name = "quantize"
    mode: str = "dynamic"
    per_channel: bool = True
    skip: tuple[str, ...] = ()

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if self.mode not in MODES:
            raise ConversionError(f"unknown quantization mode {self.mode!r}; use one of {', '.join(MODES)}")
        skip = SkipPatterns(self.skip)
        if self.mode in ("float16", "bfloat16"):
            self._half(op, skip, np.dtype(np.float16) if self.mode == "float16" else np.dtype(ml_dtypes.bfloat16))
        elif self.mode == "int8":
            self._static(op, skip)
        else:
            for matmul, w, axis in list(_candidates(op, skip)):
                if self.mode == "int8-weights":
                    wq, ws, w_axis, new_ops = _quantized_kernel(self.weights, w, axis, self.per_channel)
                    dq = quant.DequantizeOp(wq, ws, w_axis)
                    Rewriter.insert_op([*new_ops, dq], InsertPoint.before(matmul))
                    matmul.operands[1] = dq.result
                else:
                    self._dynamic(matmul, w, axis)
        if self.mode in ("dynamic", "int8"):
            self._activation_dots(op, skip)
        skip.warn_unused()
        dce(op)

    def _dynamic(self, matmul: Operation, w: jlax.WeightOp, axis: int) -> None:
        wq, ws, w_axis, new_ops = _quantized_kernel(self.weights, w, axis, self.per_channel)
        Rewriter.insert_op(new_ops, InsertPoint.before(matmul))
        params, bias, activation = _parts(matmul)
        cls = quant.DynamicDotOp if matmul.PRIMITIVE == "dot_general" else quant.DynamicConvOp
        new = cls(matmul.operands[0], wq, ws, bias, matmul.results[0].type, params, activation, w_axis)
        Rewriter.replace_op(matmul, new)

    def _activation_dots(self, module: ModuleOp, skip: SkipPatterns) -> None:
        """Dots between two activations have no weight to calibrate or pack: both sides
        are quantized on the fly, in ``int8`` mode too."""
        for dot in list(activation_dots(module)):
            if not skip(dot.name, quant.DynamicActDotOp.name):
                Rewriter.replace_op(dot, quant.DynamicActDotOp(*dot.operands, dot.results[0].type,
                                                               dict(dot.attributes)))

    def _half(self, module: ModuleOp, skip: SkipPatterns, dtype: np.dtype) -> None:
        store = self.weights
        suffix = ".f16" if dtype == np.float16 else ".bf16"
        for w in [o for o in module.walk() if isinstance(o, jlax.WeightOp)]:
            arr = store[w.weight_name]
            if arr.dtype != np.float32 or skip(w.weight_name):
                continue
            half = jlax.WeightOp(store.add(np.asarray(arr).astype(dtype), w.weight_name + suffix),
                                 tensor_type(arr.shape, dtype))
            up = quant.UpcastOp(half.result)
            Rewriter.insert_op([half, up], InsertPoint.after(w))
            w.result.replace_all_uses_with(up.result)

    def _activation_ranges(self, module: ModuleOp, candidates) -> dict[SSAValue, float]:
        """max |x| of the top-level dots' and convolutions' inputs and outputs over the
        calibration data (loop bodies run once per step: they have no single range)."""
        calibrate = self.resources.calibrate if self.resources is not None else None
        if calibrate is None:
            raise ConversionError("int8 mode needs calibration data: convert(..., calibration=[...]) "
                                  "or jaxlite convert/opt --calibration FILE")
        values = [v for matmul, _, _ in candidates if isinstance(matmul.parent_op(), func.FuncOp)
                  for v in (matmul.operands[0], matmul.results[0])]
        return dict(calibrate(module, list(dict.fromkeys(values))))

    def _static(self, module: ModuleOp, skip: SkipPatterns) -> None:
        candidates = list(_candidates(module, skip))
        ranges = self._activation_ranges(module, candidates)
        for matmul, w, axis in candidates:
            x, y = matmul.operands[0], matmul.results[0]
            if x not in ranges or y not in ranges:  # inside a loop (calibration sees the top level)
                self._dynamic(matmul, w, axis)
                continue
            wq, ws, w_axis, new_ops = _quantized_kernel(self.weights, w, axis, self.per_channel)
            sx, sy = _scalar(activation_scale(ranges[x])), _scalar(activation_scale(ranges[y]))
            xq = quant.QuantizeOp(x, sx.result)
            params, bias, activation = _parts(matmul)
            cls = quant.QDotOp if matmul.PRIMITIVE == "dot_general" else quant.QConvOp
            shape = shape_dtype(y.type)[0]
            sy_out = _scalar(activation_scale(ranges[y]))
            q = cls(xq.result, wq, sx.result, ws, bias, sy_out.result, shape, params, activation, w_axis)
            dq = quant.DequantizeOp(q.result, sy.result)
            Rewriter.insert_op([*new_ops, sx, sy, sy_out, xq, q, dq], InsertPoint.before(matmul))
            y.replace_all_uses_with(dq.result)
            ranges[dq.result] = ranges[y]  # consumers now read the dequantized value
            matmul.detach()
            matmul.erase()
        # int8 from layer to layer: dequantize sinks through what commutes with it and
        # cancels against the next quantize; then float ends and int8 starts fold into the
        # quantized ops (only once the chains are settled, hence a second walk)
        for patterns in ([SinkDequantize(), CancelRequantize()],
                         [RaiseDequantize(), FloatResult(), FoldInputQuantize()]):
            PatternRewriteWalker(GreedyRewritePatternApplier(patterns)).rewrite_module(module)


def _scale_of(dq: quant.DequantizeOp) -> float | None:
    return splat_value(dq.scale) if dq.axis == -1 else None


class CancelRequantize(RewritePattern):
    """quantize(dequantize(a, s), s) -> a."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, q: quant.QuantizeOp, rewriter: PatternRewriter):
        dq = producer(q.input)
        if isinstance(dq, quant.DequantizeOp) and shape_dtype(dq.input.type)[1] == np.int8 \
                and _scale_of(dq) is not None and _scale_of(dq) == splat_value(q.scale):
            rewriter.replace(q, [], [dq.input])


class FloatResult(RewritePattern):
    """dequantize(qdot(..., out_scale=s), s) -> qdot(...) with a float result, where the int8
    result has no other reader: once the int8 chains are settled, a dequantize still right
    after a quantized op means float is wanted (a residual add, the model's output), and the
    kernel's epilogue writes it directly -- one op and one rounding fewer."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, dq: quant.DequantizeOp, rewriter: PatternRewriter):
        q = producer(dq.input)
        if not isinstance(q, quant.StaticMatmulOp) or q.out_scale is None or len(users(q.result)) != 1 \
                or _scale_of(dq) is None or _scale_of(dq) != splat_value(q.out_scale):
            return
        new = type(q)(q.lhs, q.rhs, q.x_scale, q.w_scale, q.bias, None, shape_dtype(q.result.type)[0],
                      dict(q.attributes), q.activation, q.w_axis)
        rewriter.insert(new, InsertPoint.before(q))
        rewriter.replace(dq, [], [new.result])
        rewriter.erase(q)


# ops that only move elements: an int8 copy of them saves no arithmetic after a quantized op
_MOVES_ONLY = {"reshape", "transpose", "squeeze", "expand_dims", "copy"}


class RaiseDequantize(RewritePattern):
    """dequantize(T(qdot(...)), s) -> T(dequantize(qdot(...), s)) for T that only moves
    elements, where each int8 value has one reader: a chain that ends in float anyway gains
    nothing from int8 in between, and with the dequantize next to the qdot, ``FloatResult``
    lets the kernel write float (one rounding and one XLA conversion fewer)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, dq: quant.DequantizeOp, rewriter: PatternRewriter):
        scale = _scale_of(dq)
        chain: list[jlax.LaxOp] = []
        value = dq.input
        while isinstance(op := producer(value), jlax.LaxOp) and op.PRIMITIVE in _MOVES_ONLY \
                and len(op.operands) == 1 and len(users(op.results[0])) == 1:
            chain.append(op)
            value = op.operands[0]
        q = producer(value)
        if not chain or scale is None or not isinstance(q, quant.StaticMatmulOp) or q.out_scale is None \
                or splat_value(q.out_scale) != scale or len(users(q.result)) != 1:
            return
        new_ops: list[Operation] = [quant.DequantizeOp(q.result, dq.scale)]
        for op in reversed(chain):
            shape = shape_dtype(op.results[0].type)[0]
            new_ops.append(type(op)([new_ops[-1].results[0]], [tensor_type(shape, np.float32)],
                                    dict(op.attributes)))
        rewriter.insert(new_ops, InsertPoint.after(q))
        rewriter.replace(dq, [], [new_ops[-1].results[0]])
        for op in chain:
            rewriter.erase(op)


class FoldInputQuantize(RewritePattern):
    """qdot(quantize(x, s), ..., x_scale=s) -> qdot(x, ...) where nothing else reads the int8
    copy: the kernel quantizes x with s as it reads it (an XLA op and its int8 tensor fewer,
    e.g. at a model's input)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, q: quant.QuantizeOp, rewriter: PatternRewriter):
        uses = list(q.result.uses)
        if len(uses) != 1 or q.axis != -1:
            return
        use = uses[0]
        mm = use.operation
        if not isinstance(mm, quant.StaticMatmulOp) or use.index != 0 \
                or splat_value(mm.x_scale) is None or splat_value(mm.x_scale) != splat_value(q.scale):
            return
        rewriter.replace(q, [], [q.input])


# ops through which a per-tensor dequantize commutes (positive scale, zero point 0)
_COMMUTING = {"reshape", "transpose", "reduce_window_max", "squeeze", "broadcast_in_dim", "slice",
              "rev", "concatenate", "max", "expand_dims", "copy"}


class SinkDequantize(RewritePattern):
    """T(dequantize(a, s)) -> dequantize(T(a), s) for T that commutes with it (relu as
    max(dq(a), 0) included). A max becomes the jquant code op, in which the non-finite
    code wins as NaN does in float."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: jlax.LaxOp, rewriter: PatternRewriter):
        if op.PRIMITIVE not in _COMMUTING:
            return
        dqs = [producer(v) for v in op.operands]
        relu = op.PRIMITIVE == "max"
        if relu:
            if len(dqs) != 2 or not isinstance(dqs[0], quant.DequantizeOp) or splat_value(op.operands[1]) != 0:
                return
            dqs = dqs[:1]
        elif not all(isinstance(d, quant.DequantizeOp) for d in dqs):
            return
        scales = {_scale_of(d) for d in dqs}
        if len(scales) != 1 or None in scales or any(shape_dtype(d.input.type)[1] != np.int8 for d in dqs):
            return
        new_ops: list[Operation] = []
        inputs = [d.input for d in dqs]
        if relu:
            zero = jlax.ConstantOp.from_array(np.zeros((), np.int8))
            new_ops.append(zero)
            inputs.append(zero.result)
        int_type = type(op) if op.PRIMITIVE not in quant.CODE_OPS else quant.CODE_OPS[op.PRIMITIVE]
        int_op = int_type(inputs, [tensor_type(shape_dtype(op.results[0].type)[0], np.int8)], dict(op.attributes))
        new_ops += [int_op, quant.DequantizeOp(int_op.results[0], dqs[0].scale)]
        rewriter.replace(op, new_ops, [new_ops[-1].results[0]])


__all__ = ["QuantizePass", "MODES", "activation_dots", "kernel_axis", "users"]
