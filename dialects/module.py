"""Modules of jaxlite IR: the xDSL context that knows the dialects, text in and out,
verification, and the queries every layer asks of a module (its @main, its blocks)."""

from __future__ import annotations

import io
from collections import Counter

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import Builtin, ModuleOp
from xdsl.ir import Block
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import ParseError, VerifyException

from jaxlite.dialects.fused import JFuse
from jaxlite.dialects.jlax import JLax
from jaxlite.dialects.quant import JQuant
from jaxlite.errors import ModelFormatError

# ops that structure a module rather than compute: not counted as "ops" anywhere
STRUCTURAL_OPS = frozenset({"builtin.module", "func.func", "func.return", "jlax.yield"})
# ops that only name data (weights, inline constants)
DATA_OPS = frozenset({"jlax.weight", "jlax.constant"})


def make_context() -> Context:
    ctx = Context()
    for dialect in (Builtin, func.Func, JLax, JFuse, JQuant):
        ctx.load_dialect(dialect)
    return ctx


def print_module(module: ModuleOp) -> str:
    out = io.StringIO()
    Printer(stream=out).print_op(module)
    out.write("\n")
    return out.getvalue()


def first_lines(text: str, n: int = 12) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")


def parse_module(text: str, source: str = "IR text") -> ModuleOp:
    """Parse and verify IR text; any problem becomes a ModelFormatError naming ``source``."""
    try:
        module = Parser(make_context(), text, name=source).parse_module()
    except ParseError as e:
        raise ModelFormatError(f"{source} does not parse: {first_lines(str(e))}") from None
    except Exception as e:  # unknown ops/attributes surface as various xDSL errors
        raise ModelFormatError(f"{source} does not parse: {type(e).__name__}: {first_lines(str(e))}") from None
    try:
        verify_module(module)
    except VerifyException as e:
        raise ModelFormatError(f"{source} does not verify: {e}") from None
    return module


def verify_module(module: ModuleOp) -> None:
    """Verify; the VerifyException keeps only the diagnosis (xDSL appends the whole module)."""
    try:
        module.verify()
    except VerifyException as e:
        raise VerifyException(first_lines(str(e), 6)) from None


def find_main(module: ModuleOp) -> func.FuncOp:
    """The module's ``func.func @main``; ModelFormatError when it has none."""
    for op in module.ops:
        if isinstance(op, func.FuncOp) and op.sym_name.data == "main":
            return op
    raise ModelFormatError("the IR has no func.func @main")


def blocks_of(module: ModuleOp) -> list[Block]:
    """Every block of the module (function bodies and control-flow regions)."""
    out = []
    for op in module.walk():
        for region in op.regions:
            out.extend(region.blocks)
    return out


def op_counts(module: ModuleOp, *, data: bool = True) -> Counter:
    """Ops by name, structure (module, function, return, yield) not counted -- nor, with
    ``data=False``, the ops that only name weights and constants: the one way jaxlite counts
    ops (pass statistics, summaries, the Model's repr)."""
    skip = STRUCTURAL_OPS if data else STRUCTURAL_OPS | DATA_OPS
    return Counter(op.name for op in module.walk() if op.name not in skip)
