"""Per-layer quantization error: what users miss most in TFLite and ONNX Runtime.

``quantization_report(float_model, quant_model, data)`` runs both models on the same
inputs and, for every quantized dot/conv and the float op it came from (matched by kernel
weight name), measures

* **local** error: the quantized op fed the float model's input to that layer, against
  the float op's output — the error this layer adds on its own (what to ``skip``);
* **accumulated** error: the quantized model's own value there, against the float one —
  what reaches this layer from everything before it as well.

Layers are listed worst local SQNR first. Layers inside loop and branch bodies (an RNN
cell's, run once per step) have no single output to tap; the report counts them as
``not_listed``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from xdsl.ir import Operation, SSAValue

from jaxlite.compiler.model import Model
from jaxlite.dialects import fused, int8, jlax, quant
from jaxlite.dialects.module import find_main
from jaxlite.errors import ConversionError
from jaxlite.passes.quantize import activation_dots
from jaxlite.runtime.lowering import reference_kernel
from jaxlite.runtime.taps import tapped_program

_SUFFIXES = (".q", ".f16")
ACT_DOT = "dot_general#"  # report name prefix of the dots between two activations


@dataclass
class LayerError:
    weight: str           # the float kernel's weight name (Flax path)
    op: str               # the quantized op kind
    sqnr_db: float        # local: 10 log10(sum ref^2 / sum (q - ref)^2); inf when exact
    max_rel_error: float  # local: max |q - ref| / max |ref|
    accumulated_sqnr_db: float
    accumulated_max_rel_error: float
    shape: tuple[int, ...]

    @property
    def module_path(self) -> str:
        parts = self.weight.split(".")
        return ".".join(p for p in parts[:-1] if p not in ("kernel", "folded")) or self.weight


@dataclass
class QuantizationReport:
    mode: str
    layers: list[LayerError]
    not_listed: int = 0  # quantized layers inside loop/branch bodies

    def __str__(self) -> str:
        head = f"per-layer quantization error ({self.mode}), worst first"
        width = max([len("layer (kernel weight)")] + [len(e.weight) for e in self.layers])
        op_width = max([2] + [len(e.op) for e in self.layers])
        rows = [f"{'layer (kernel weight)':{width}s} {'op':{op_width}s} {'SQNR dB':>8s} {'max rel err':>12s}"
                f" {'accum. SQNR':>12s} {'accum. rel':>11s}"]
        for e in self.layers:
            rows.append(f"{e.weight:{width}s} {e.op:{op_width}s} {e.sqnr_db:8.1f} {e.max_rel_error:12.4f}"
                        f" {e.accumulated_sqnr_db:12.1f} {e.accumulated_max_rel_error:11.4f}")
        if self.not_listed:
            rows.append(f"({self.not_listed} quantized layers inside loop or branch bodies are not listed)")
        return "\n".join([head, *rows])

    def to_dict(self) -> dict:
        return {"mode": self.mode, "layers": [
            {"weight": e.weight, "module": e.module_path, "op": e.op, "sqnr_db": e.sqnr_db,
             "max_rel_error": e.max_rel_error, "accumulated_sqnr_db": e.accumulated_sqnr_db,
             "accumulated_max_rel_error": e.accumulated_max_rel_error, "shape": list(e.shape)}
            for e in self.layers], "not_listed": self.not_listed}


def _kernel_name(op: Operation) -> str | None:
    owner = op.operands[1].owner
    if isinstance(owner, quant.DequantizeOp | quant.UpcastOp):
        owner = owner.operands[0].owner
    if isinstance(owner, jlax.WeightOp):
        name = owner.weight_name
        for s in _SUFFIXES:
            if name.endswith(s):
                return name[: -len(s)]
        return name
    return None


def _is_matmul(op: Operation) -> bool:
    return isinstance(op, fused.FusedOp | quant.QuantizedMatmulOp) or (
        isinstance(op, jlax.LaxOp) and op.PRIMITIVE in ("dot_general", "conv_general_dilated"))


def _taps(model: Model) -> dict[str, tuple[Operation, SSAValue]]:
    """name -> (op, output) of every dot/conv: layers by kernel weight name, dots between
    two activations by their order (``dot_general#i``: the same in both models, since
    quantization replaces them in place)."""
    out = {}
    main = find_main(model.module)
    act = set(activation_dots(main))
    for op in main.body.block.ops:
        if op in act or isinstance(op, quant.DynamicActDotOp):
            out[f"{ACT_DOT}{sum(1 for n in out if n.startswith(ACT_DOT))}"] = (op, op.results[0])
        elif _is_matmul(op) and (name := _kernel_name(op)) is not None:
            out.setdefault(name, (op, op.results[0]))
    return out


def _run_with_taps(model: Model, values: list[SSAValue], batches: list[tuple]):
    run = tapped_program(model.module, model.weights, values)
    sig = model.signature
    for batch in batches:
        leaves = sig.in_tree.flatten(batch, "data")
        yield [np.asarray(t) for t in jax.device_get(run([jnp.asarray(x, s.dtype) for x, s in zip(leaves, sig.inputs, strict=True)]))]


def quantization_report(float_model: Model, quant_model: Model, data: Iterable) -> QuantizationReport:
    """SQNR and max relative error of every quantized layer's output against the float
    model's, on ``data`` (an iterable of example-argument tuples), worst first."""
    batches = [b if isinstance(b, tuple) else (b,) for b in data]
    if not batches:
        raise ConversionError("quantization_report needs at least one batch of data")
    f_sig, q_sig = float_model.signature, quant_model.signature
    if f_sig.describe_inputs() != q_sig.describe_inputs() or \
            [s.describe() for s in f_sig.outputs] != [s.describe() for s in q_sig.outputs]:
        raise ConversionError(f"the two models are not the same model quantized: the first takes "
                              f"({f_sig.describe_inputs()}), the second ({q_sig.describe_inputs()})")
    f_taps, q_taps = _taps(float_model), _taps(quant_model)
    names = [n for n, (op, _) in q_taps.items() if n in f_taps
             and (isinstance(op, quant.QuantizedMatmulOp | quant.DynamicActDotOp) or _is_low_precision(op))]

    main = find_main(quant_model.module)
    in_regions = sum(1 for op in main.walk() if isinstance(op, quant.QuantizedMatmulOp | quant.DynamicActDotOp)
                     and op.parent_block() is not main.body.block)
    if not names and in_regions:
        raise ConversionError(f"the {in_regions} quantized layers of the second model are all inside loop or "
                              "branch bodies (an RNN cell's, say): the report compares top-level layers only")
    if not names:
        raise ConversionError("no quantized layer of the second model matches a layer of the first")
    # per layer: the float output, then the float model's inputs to it
    inputs = {n: [v for v in f_taps[n][0].operands[:2 if n.startswith(ACT_DOT) else 1]] for n in names}
    f_vals = [v for n in names for v in (f_taps[n][1], *inputs[n])]
    q_vals = [q_taps[n][1] for n in names]
    local = {n: _local_runner(q_taps[n][0], quant_model) for n in names}
    acc = {n: _ErrorSums() for n in names}
    loc = {n: _ErrorSums() for n in names}
    for f_out, q_out in zip(_run_with_taps(float_model, f_vals, batches),
                            _run_with_taps(quant_model, q_vals, batches), strict=True):
        at = 0
        for i, n in enumerate(names):
            ref, xs = f_out[at], f_out[at + 1: at + 1 + len(inputs[n])]
            at += 1 + len(inputs[n])
            acc[n].add(ref, _as_float(q_taps[n][0], q_out[i]))
            if local[n] is not None:
                loc[n].add(ref, _as_float(q_taps[n][0], local[n](*xs)))
    layers = []
    for n in names:
        a = acc[n]
        lo = loc[n] if local[n] is not None else a
        layers.append(LayerError(n, q_taps[n][0].name, lo.sqnr(), lo.rel(), a.sqnr(), a.rel(),
                                 tuple(q_taps[n][1].type.get_shape())))
    layers.sort(key=lambda e: e.sqnr_db)
    mode = (quant_model.metadata.get("quantization") or {}).get("mode", "unknown")
    return QuantizationReport(mode, layers, in_regions)


class _ErrorSums:
    def __init__(self):
        self.ref2 = self.err2 = self.max_err = self.max_ref = 0.0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        ref = ref.astype(np.float64)
        err = got.astype(np.float64) - ref
        self.ref2 += float(np.sum(ref ** 2))
        self.err2 += float(np.sum(err ** 2))
        self.max_err = max(self.max_err, float(np.max(np.abs(err))))
        self.max_ref = max(self.max_ref, float(np.max(np.abs(ref))))

    def sqnr(self) -> float:
        return math.inf if self.err2 == 0 else 10 * math.log10(max(self.ref2, 1e-30) / self.err2)

    def rel(self) -> float:
        return self.max_err / self.max_ref if self.max_ref else 0.0


def _static_value(value: SSAValue, model: Model):
    """The array of an operand computed from weights and constants only, else None."""
    op = value.owner
    if isinstance(op, jlax.WeightOp):
        return np.asarray(model.weights[op.weight_name])
    if isinstance(op, jlax.ConstantOp):
        return op.to_array()
    if isinstance(op, quant.DequantizeOp | quant.UpcastOp):
        inputs = [_static_value(v, model) for v in op.operands]
        if any(x is None for x in inputs):
            return None
        return np.asarray(op.evaluate(*inputs)[0])
    return None


def _local_runner(op: Operation, model: Model):
    """x (the float model's input(s) of this layer) -> this quantized op's output, or None."""
    kernel = reference_kernel(op).run
    if isinstance(op, quant.DynamicActDotOp):
        both = jax.jit(lambda x, y: kernel({}, x, y)[0])
        return lambda x, y: np.asarray(both(jnp.asarray(x), jnp.asarray(y)))
    rest = [_static_value(v, model) for v in op.operands[1:]]
    if any(x is None for x in rest):
        return None
    layer = jax.jit(lambda x: kernel({}, x, *rest)[0])
    if isinstance(op, quant.StaticMatmulOp):
        x_scale = jnp.reshape(rest[1], ())
        return lambda x: np.asarray(layer(int8.quantize(jnp.asarray(x), x_scale)))
    return lambda x: np.asarray(layer(jnp.asarray(x)))


def _is_low_precision(op: Operation) -> bool:
    owner = op.operands[1].owner
    return isinstance(owner, quant.DequantizeOp | quant.UpcastOp)


def _as_float(op: Operation, value: np.ndarray) -> np.ndarray:
    """A tapped output in float: int8 results of qdot/qconv are dequantized with out_scale."""
    if isinstance(op, quant.StaticMatmulOp) and op.out_scale is not None:
        scale = op.out_scale.owner
        s = float(scale.to_array()) if isinstance(scale, jlax.ConstantOp) else 1.0
        return value.astype(np.float32) * s
    return value
