"""Modules of jaxlite IR: the xDSL context that knows the dialects, text in and out,
verification, and the queries every layer asks of a module (its @main, its blocks)."""

from __future__ import annotations

import io
import math
import re
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

# Parsing is bounded whatever a text declares: at most this many lines (~1 ms each to parse
# and verify), and dense constants of at most this many elements -- checked on the type,
# before xDSL expands a splat (`dense<1.0> : tensor<20000x20000xf32>`) into a list of every
# element. jaxlite itself writes constants of at most jlax.INLINE_CONSTANT_ELEMENTS.
MAX_IR_LINES = 100_000
MAX_CONSTANT_ELEMENTS = 1 << 16

# ops that structure a module or only name data (weights, inline constants) rather than
# compute: not counted as "ops" anywhere
NOT_COUNTED = frozenset({"builtin.module", "func.func", "func.return", "jlax.yield", "jlax.weight", "jlax.constant"})


def make_context() -> Context:
    ctx = Context()
    for dialect in (Builtin, func.Func, JLax, JFuse, JQuant):
        ctx.load_dialect(dialect)
    return ctx


def print_module(module: ModuleOp, generic: bool = False) -> str:
    """The module's text; ``generic``: MLIR's generic op form, which tools that know none of
    jaxlite's dialects (Netron, mlir-opt with unregistered dialects allowed) can read."""
    out = io.StringIO()
    Printer(stream=out, print_generic_format=generic).print_op(module)
    out.write("\n")
    return out.getvalue()


def first_lines(text: str, n: int = 12) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")


class _BoundedParser(Parser):
    """xDSL's parser, refusing dense constants above ``MAX_CONSTANT_ELEMENTS`` elements."""

    def _parse_dense_literal_type(self):
        type = super()._parse_dense_literal_type()
        elements = math.prod(type.get_shape())
        if elements > MAX_CONSTANT_ELEMENTS:
            self.raise_error(f"a dense constant of {elements} elements (at most {MAX_CONSTANT_ELEMENTS} inline: "
                             "bigger arrays are weights)")
        return type


def _parse_error_line(error: ParseError) -> str:
    """xDSL's error (location, source line, caret, message) as 'line L, column C: message'."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    where = re.match(r".*:(\d+):(\d+)$", lines[0]) if lines else None
    message = lines[-1].strip() if lines else "syntax error"
    return f"line {where.group(1)}, column {where.group(2)}: {message}" if where else message


_ESCAPES = re.compile(r'\\(?:["nt\\]|[0-9A-Fa-f]{2})')


def _check_string_literals(text: str, source: str) -> None:
    """Every string literal closed on its line with valid escapes. xDSL 0.74 lexes strings with
    a regex that backtracks exponentially where one is not (a 300-character line took longer
    than anyone waits): such text is refused here, in linear time."""
    for number, line in enumerate(text.splitlines(), 1):
        if '"' not in line:
            continue
        pos = 0
        while (start := line.find('"', pos)) != -1:
            end = start + 1
            while end < len(line) and line[end] != '"':
                if line[end] == "\\":
                    if not _ESCAPES.match(line, end):
                        raise ModelFormatError(f"{source} does not parse: line {number}: invalid escape in a string")
                    end += 3 if line[end + 1] not in '"nt\\' else 2
                elif line[end] in "\v\f":
                    raise ModelFormatError(f"{source} does not parse: line {number}: control character in a string")
                else:
                    end += 1
            if end >= len(line):
                raise ModelFormatError(f"{source} does not parse: line {number}: unterminated string literal")
            pos = end + 1


def parse_module(text: str, source: str = "IR text") -> ModuleOp:
    """Parse and verify IR text; any problem becomes a ModelFormatError naming ``source``."""
    lines = text.count("\n")
    if lines > MAX_IR_LINES:
        raise ModelFormatError(f"{source} has {lines} lines (at most {MAX_IR_LINES})")
    _check_string_literals(text, source)
    try:
        module = _BoundedParser(make_context(), text, name=source).parse_module()
    except ParseError as e:
        raise ModelFormatError(f"{source} does not parse: {_parse_error_line(e)}") from None
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


def op_counts(module: ModuleOp) -> Counter:
    """The ops that compute, by name (those inside loop bodies and branches included; the
    module's structure, weights and constants not): the one way jaxlite counts ops (pass
    statistics, summaries, graphs, the Model's repr)."""
    return Counter(op.name for op in module.walk() if op.name not in NOT_COUNTED)
