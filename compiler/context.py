"""The xDSL context that knows jaxlite's dialects, and parsing/printing of IR text."""

from __future__ import annotations

import io

from xdsl.context import Context
from xdsl.dialects.builtin import Builtin, ModuleOp
from xdsl.dialects.func import Func
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import ParseError, VerifyException

from jaxlite.compiler.errors import ModelFormatError
from jaxlite.dialects.fused import JFuse
from jaxlite.dialects.jlax import JLax
from jaxlite.dialects.quant import JQuant


def make_context() -> Context:
    ctx = Context()
    for dialect in (Builtin, Func, JLax, JFuse, JQuant):
        ctx.load_dialect(dialect)
    return ctx


def print_module(module: ModuleOp) -> str:
    out = io.StringIO()
    Printer(stream=out).print_op(module)
    out.write("\n")
    return out.getvalue()


def _first_lines(text: str, n: int = 12) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")


def parse_module(text: str, source: str = "IR text") -> ModuleOp:
    """Parse and verify IR text; any problem becomes a ModelFormatError naming ``source``."""
    try:
        module = Parser(make_context(), text, name=source).parse_module()
    except ParseError as e:
        raise ModelFormatError(f"{source} does not parse: {_first_lines(str(e))}") from None
    except Exception as e:  # unknown ops/attributes surface as various xDSL errors
        raise ModelFormatError(f"{source} does not parse: {type(e).__name__}: {_first_lines(str(e))}") from None
    verify_module(module, source)
    return module


def verify_module(module: ModuleOp, source: str = "IR") -> None:
    try:
        module.verify()
    except VerifyException as e:
        # xDSL appends the whole module to verifier messages; keep only the diagnosis.
        raise ModelFormatError(f"{source} does not verify: {_first_lines(str(e), 6)}") from None
