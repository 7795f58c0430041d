"""Pipelines of passes: parse ``"canonicalize, cse, dce"``, run them, record statistics.

Names map to xDSL ModulePasses, so pipeline strings take xDSL's option syntax too
(``"canonicalize{fast-math=true}"``, ``"quantize{mode=int8 skip="params.Dense_2*"}"``).
Passes that read the model's weights (``ModelPass``) are handed the model's resources
before they run; entries of the WeightStore no op refers to any more are dropped after
each pass. Whatever goes wrong -- a malformed string, an unknown pass, bad options, a pass
that fails or leaves IR that does not verify -- is a ``ConversionError`` naming the pass.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xdsl.dialects.builtin import ModuleOp, SymbolRefAttr
from xdsl.passes import ModulePass
from xdsl.utils.arg_spec import parse_pipeline as xdsl_parse_pipeline
from xdsl.utils.exceptions import ArgSpecParseError, VerifyException

from jaxlite.dialects.jlax import WeightOp
from jaxlite.dialects.module import make_context, op_counts, verify_module
from jaxlite.dialects.weights import WeightStore
from jaxlite.errors import ConversionError, JaxliteError
from jaxlite.passes.canonicalize import CanonicalizePass
from jaxlite.passes.capture_constants import CaptureConstantsPass
from jaxlite.passes.common import ModelPass, PassResources
from jaxlite.passes.cse import CSEPass
from jaxlite.passes.dce import DCEPass
from jaxlite.passes.fold_affine import FoldAffinePass, FoldBatchNormPass
from jaxlite.passes.fuse import FusePass
from jaxlite.passes.quantize import QuantizePass
from jaxlite.passes.split_transposed_conv import SplitTransposedConvPass
from jaxlite.passes.unroll_layer_scans import UnrollLayerScansPass

PASSES: dict[str, type[ModulePass]] = {
    p.name: p for p in (CaptureConstantsPass, CanonicalizePass, CSEPass, DCEPass, FoldAffinePass, FoldBatchNormPass, FusePass,
                        SplitTransposedConvPass, UnrollLayerScansPass, QuantizePass)
}
DEFAULT_PIPELINE = ("capture-constants,unroll-layer-scans,canonicalize,cse,dce,fold-affine,fuse,"
                    "split-transposed-conv,canonicalize,cse,dce")


def _split_items(spec: str) -> list[str]:
    """The pipeline's items, split at commas outside braces and quotes, whitespace stripped."""
    items, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(spec):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(spec[start:i])
            start = i + 1
    items.append(spec[start:])
    return [item.strip() for item in items]


def _one_line(error: BaseException) -> str:
    """xDSL's multi-line spec error (source line, caret, message) as 'column N: message'."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    where = next((m.group(1) for line in lines if (m := re.match(r"pass-pipeline:\d+:(\d+)", line))), None)
    message = lines[-1] if lines else type(error).__name__
    return f"column {where}: {message}" if where else message


def parse(spec: str | Sequence[str] | None) -> list[ModulePass]:
    """Pass instances for a pipeline string or list of names; "" / [] / None is empty."""
    if spec is None:
        return []
    if not isinstance(spec, str):
        spec = ",".join(spec)
    if not spec.strip():
        return []
    passes = []
    for item in _split_items(spec):
        if not item:
            raise ConversionError(f"cannot parse pass pipeline {spec!r}: an empty pass name (two commas in a row?)")
        try:
            (parsed,) = xdsl_parse_pipeline(item)
        except (Exception, ArgSpecParseError) as e:  # xDSL's ArgSpecParseError is a BaseException
            hint = ' (option values other than names and numbers go in quotes: skip="params.Dense_2*")' \
                if "{" in item else ""
            raise ConversionError(f"cannot parse pass {item!r}: {_one_line(e)}{hint}") from None
        cls = PASSES.get(parsed.name)
        if cls is None:
            raise ConversionError(f"unknown pass {parsed.name!r}; available passes: {', '.join(sorted(PASSES))}")
        try:
            passes.append(cls.from_pass_spec(parsed))
        except Exception as e:
            raise ConversionError(f"bad options for pass {parsed.name!r}: {e}") from None
    return passes


@dataclass
class PassStats:
    name: str
    ops_before: Counter
    ops_after: Counter
    weight_bytes_before: int
    weight_bytes_after: int
    seconds: float

    def line(self) -> str:
        before, after = sum(self.ops_before.values()), sum(self.ops_after.values())
        delta = []
        for kind in sorted(set(self.ops_before) | set(self.ops_after)):
            d = self.ops_after[kind] - self.ops_before[kind]
            if d:
                delta.append(f"{kind.split('.', 1)[-1]} {d:+d}")
        changes = f" ({', '.join(delta)})" if delta else ""
        return (f"{self.name}: {before} -> {after} ops{changes}; weights "
                f"{_kb(self.weight_bytes_before)} -> {_kb(self.weight_bytes_after)}; "
                f"{self.seconds * 1e3:.0f} ms")


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / 2**20:.1f} MiB"


def run(module: ModuleOp, resources: PassResources | WeightStore, passes: Sequence[ModulePass],
        after_each: Callable[[str, ModuleOp, PassStats], None] | None = None) -> list[PassStats]:
    """Run ``passes`` over ``module`` in place, verifying after each one. ``resources``: the
    model's weights (and calibration), handed to the passes that read them."""
    if isinstance(resources, WeightStore):
        resources = PassResources(resources)
    store = resources.weights
    ctx = make_context()
    stats = []
    for p in passes:
        before, wb = op_counts(module), _live_bytes(module, store)
        t = time.perf_counter()
        try:
            (p.bind(resources) if isinstance(p, ModelPass) else p).apply(ctx, module)
        except JaxliteError as e:
            raise ConversionError(f"pass {p.name}: {e}") from e
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConversionError(f"pass {p.name} failed: {type(e).__name__}: {first}") from e
        store.prune(module)
        tidy_weight_names(module, store)
        try:
            verify_module(module)
        except VerifyException as e:
            raise ConversionError(f"the IR after pass {p.name} does not verify: {e}") from None
        s = PassStats(p.name, before, op_counts(module), wb, _live_bytes(module, store),
                      time.perf_counter() - t)
        stats.append(s)
        if after_each is not None:
            after_each(p.name, module, s)
    return stats


def tidy_weight_names(module: ModuleOp, store: WeightStore) -> None:
    """``name_2`` -> ``name`` where a pass replaced ``name`` (a folded reshape of a bias)."""
    renames = {}
    for name in list(store):
        m = re.fullmatch(r"(.+)_\d+", name)
        if m and m.group(1) not in store and m.group(1) not in renames.values():
            renames[name] = m.group(1)
    if not renames:
        return
    for op in module.walk():
        if isinstance(op, WeightOp) and op.weight_name in renames:
            op.properties["ref"] = SymbolRefAttr(renames[op.weight_name])
    store.arrays = {renames.get(k, k): v for k, v in store.arrays.items()}


def _live_bytes(module: ModuleOp, store: WeightStore) -> int:
    names = {op.weight_name for op in module.walk() if isinstance(op, WeightOp)}
    return sum(store[n].nbytes for n in names if n in store)


__all__ = ["PASSES", "DEFAULT_PIPELINE", "parse", "run", "PassStats", "PassResources"]
