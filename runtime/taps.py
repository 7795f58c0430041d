"""A model's program with some of its intermediate values as extra outputs, on XLA: what
calibration (activation ranges) and the quantization report (per-layer errors) measure."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import SSAValue

from jaxlite.dialects import dims
from jaxlite.dialects.module import find_main
from jaxlite.dialects.types import shape_dtype
from jaxlite.dialects.weights import WeightStore
from jaxlite.runtime.lowering import Lowering
from jaxlite.runtime.program import BlockProgram


def tapped_program(module: ModuleOp, weights: WeightStore, values: Sequence[SSAValue],
                   finish: Callable[[list], list] = lambda taps: taps) -> Callable[[list], list]:
    """``run(input leaves) -> finish(values)``: one jitted program computing the model up to
    ``values`` (SSA values of @main's body), whose taps ``finish`` may reduce on the device.
    A module with symbolic dimensions is specialized to each new set of input shapes
    (ValueError naming the dimension the inputs do not fit)."""
    if not dims.has_symbolic_types(module):
        return _static_tapped_program(module, weights, values, finish)
    shapes = [shape_dtype(t)[0] for t in find_main(module).function_type.inputs.data]
    names = [f"input {i}" for i in range(len(shapes))]
    programs: dict[tuple, Callable[[list], list]] = {}

    def run(leaves):
        key = tuple(tuple(np.shape(x)) for x in leaves)
        if key not in programs:
            concrete = dims.specialize(module, dims.solve(shapes, key, names))
            taps = dims.counterparts(module, concrete, values)
            programs[key] = _static_tapped_program(concrete, weights, taps, finish)
        return programs[key](leaves)
    return run


def _static_tapped_program(module, weights, values, finish):
    lowering = Lowering(("xla",), weights)
    program = BlockProgram(find_main(module).body.block, lowering.kernel, taps=values)
    n_out = len(program.results) - len(values)
    arrays = {name: jnp.asarray(weights[name]) for name in lowering.read_weights()}
    arrays.update({name: jnp.asarray(make()) for name, (_, make, _) in lowering.derived.items()})
    jitted = jax.jit(lambda arrays, leaves: finish(program(arrays, leaves)[n_out:]))
    return lambda leaves: jitted(arrays, leaves)
