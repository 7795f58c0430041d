"""Pipelines of passes: parse ``"canonicalize,cse,dce"``, run them, record IR and statistics.

Names map to xDSL ModulePasses, so pipeline strings take xDSL's option syntax too
(``"canonicalize{fast-math=true}"``). The model's WeightStore is bound for the passes
while they run, and entries no op refers to any more are dropped at the end.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.utils.arg_spec import parse_pipeline as xdsl_parse_pipeline

from jaxlite.compiler.context import make_context, print_module, verify_module
from jaxlite.compiler.errors import ConversionError
from jaxlite.compiler.weights import WeightStore
from jaxlite.passes.canonicalize import CanonicalizePass
from jaxlite.passes.capture_constants import CaptureConstantsPass
from jaxlite.passes.common import using_store
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


def parse(spec: str | Sequence[str] | None) -> list[ModulePass]:
    """Pass instances for a pipeline string or list of names; "" / [] / None is empty."""
    if spec is None:
        return []
    if not isinstance(spec, str):
        spec = ",".join(spec)
    spec = spec.strip()
    if not spec:
        return []
    try:
        parsed = list(xdsl_parse_pipeline(spec))
    except Exception as e:
        raise ConversionError(f"cannot parse pass pipeline {spec!r}: {e}") from None
    passes = []
    for item in parsed:
        cls = PASSES.get(item.name)
        if cls is None:
            raise ConversionError(f"unknown pass {item.name!r}; available passes: {', '.join(sorted(PASSES))}")
        try:
            passes.append(cls.from_pass_spec(item))
        except Exception as e:
            raise ConversionError(f"bad options for pass {item.name!r}: {e}") from None
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


def op_counts(module: ModuleOp) -> Counter:
    return Counter(op.name for op in module.walk() if op is not module and op.name != "func.func")


def run(module: ModuleOp, store: WeightStore, passes: Sequence[ModulePass],
        after_each: Callable[[str, ModuleOp, PassStats], None] | None = None) -> list[PassStats]:
    """Run ``passes`` over ``module`` in place, verifying after each one."""
    ctx = make_context()
    stats = []
    with using_store(store):
        for p in passes:
            before, wb = op_counts(module), _live_bytes(module, store)
            t = time.perf_counter()
            p.apply(ctx, module)
            store.prune(module)
            tidy_weight_names(module, store)
            verify_module(module, f"IR after {p.name}")
            s = PassStats(p.name, before, op_counts(module), wb, _live_bytes(module, store),
                          time.perf_counter() - t)
            stats.append(s)
            if after_each is not None:
                after_each(p.name, module, s)
    return stats


def tidy_weight_names(module: ModuleOp, store: WeightStore) -> None:
    """``name_2`` -> ``name`` where a pass replaced ``name`` (a folded reshape of a bias)."""
    import re

    from xdsl.dialects.builtin import SymbolRefAttr

    from jaxlite.dialects.jlax import WeightOp

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
    from jaxlite.dialects.jlax import WeightOp

    names = {op.weight_name for op in module.walk() if isinstance(op, WeightOp)}
    return sum(store[n].nbytes for n in names if n in store)


__all__ = ["PASSES", "DEFAULT_PIPELINE", "parse", "run", "PassStats", "op_counts", "print_module"]
