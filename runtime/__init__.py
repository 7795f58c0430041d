"""Runs jaxlite IR: kernels per op and target, chosen when a model is compiled.

``available_targets()`` lists the kernel targets this machine can use (``cpu-...`` for the
CPU's native kernels, ``xla`` last: the portable path).
"""

from jaxlite.runtime.lowering import Lowering
from jaxlite.runtime.registry import available_targets, target_status

__all__ = ["Lowering", "available_targets", "target_status"]
