"""cse: compute identical ops on identical operands once.

xDSL's own CommonSubexpressionElimination does the work: jlax/jfuse ops are Pure and
compare by name, attributes, operands and result types, so duplicate constants, weight
references (same @name) and repeated computations merge.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.transforms.common_subexpression_elimination import cse


@dataclass(frozen=True)
class CSEPass(ModulePass):
    name = "cse"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        cse(op)
