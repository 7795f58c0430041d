"""dce: remove every op the outputs do not need.

Forwards identity ops that only matter to autodiff or scheduling (``stop_gradient``,
``copy``, ``optimization_barrier``) and then erases unused Pure ops with xDSL's dead-code
elimination, so training-only work (BatchNorm statistics updates when
``convert(..., outputs=...)`` drops them) and random numbers nothing reads disappear.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.transforms.dead_code_elimination import dce

from jaxlite.dialects import jlax

_IDENTITY = {"stop_gradient", "copy", "optimization_barrier"}


@dataclass(frozen=True)
class DCEPass(ModulePass):
    name = "dce"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for inner in list(op.walk()):
            if isinstance(inner, jlax.LaxOp) and inner.PRIMITIVE in _IDENTITY:
                for result, operand in zip(inner.results, inner.operands, strict=True):
                    result.replace_all_uses_with(operand)
                inner.detach()
                inner.erase()
        dce(op)
