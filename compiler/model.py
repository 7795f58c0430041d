"""Model: the converted program (IR module + weights + signature), and its file I/O."""

from __future__ import annotations

import functools
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp

from jaxlite._version import __version__
from jaxlite.compiler import fileformat
from jaxlite.compiler.calibration import activation_ranges
from jaxlite.compiler.graph import model_graph, to_html, to_svg
from jaxlite.dialects import dims
from jaxlite.dialects.jlax import WeightOp
from jaxlite.dialects.module import find_main, op_counts, parse_module, print_module
from jaxlite.dialects.signature import Signature
from jaxlite.dialects.types import shape_dtype
from jaxlite.dialects.weights import WeightStore
from jaxlite.errors import ExportError, ModelFormatError
from jaxlite.passes import pipeline
from jaxlite.passes.common import PassResources
from jaxlite.passes.pipeline import PassStats
from jaxlite.runtime.executable import Executable
from jaxlite.runtime.polymorphic import MAX_SHAPES, PolymorphicExecutable


@dataclass
class Model:
    """A converted model. ``compile()`` makes it callable; ``save()`` writes a .jlite file."""

    module: ModuleOp
    weights: WeightStore
    signature: Signature
    metadata: dict = field(default_factory=dict)
    ir_history: list[tuple[str, str]] = field(default_factory=list)  # (step name, IR text)
    pass_stats: list = field(default_factory=list)  # PassStats of the pipeline that made it

    def record(self, step: str, text: str) -> None:
        """Keep the IR text after a pipeline step; repeats are named NAME#2, NAME#3, ..."""
        taken = {n for n, _ in self.ir_history}
        name, i = step, 1
        while name in taken:
            i += 1
            name = f"{step}#{i}"
        self.ir_history.append((name, text))

    def ir(self, after: str | None = None, generic: bool = False) -> str:
        """IR text of the model, or (``after=NAME``) as it was after that pipeline step
        ("trace" is the IR straight from tracing; a repeated pass is NAME#2, ...).
        ``generic``: MLIR's generic op form (what Netron draws)."""
        if after is None:
            return print_module(self.module, generic)
        for name, text in self.ir_history:
            if name == after:
                return print_module(parse_module(text, f"IR after {name}"), True) if generic else text
        known = ", ".join(n for n, _ in self.ir_history) or "none recorded"
        raise KeyError(f"no IR recorded after {after!r} (recorded: {known})")

    def compile(self, device=None, float16_compute: bool | None = None,
                embed_weights_bytes: int | None = None, native_gemm: bool = True,
                direct: bool | None = None, targets=None, max_shapes: int = MAX_SHAPES,
                mesh=None, batch_axis: str | None = None, weight_sharding=None):
        """An Executable running this model on ``device`` (None, "cpu" or "gpu").

        ``float16_compute`` (float16 models): dot/conv in float16 with float32
        accumulation; default on GPU, while on CPU weights are upcast once at load.
        ``embed_weights_bytes``: weights up to this total (smallest first, default 16 MiB)
        are compiled into the executable as constants — faster calls, more memory.
        ``native_gemm``: jaxlite's native CPU kernels where the CPU runs them (identical
        int8 products; False: XLA's code only).
        ``direct``: a small program (<= 8M multiply-adds) that is only native kernels runs
        them without XLA, whose per-call cost would dominate it; calls then return numpy
        arrays. None: where possible; False: never; True:
        required (DeviceError where not possible).
        ``targets``: kernel targets in order of preference (``jaxlite.runtime.
        available_targets()``; instead of ``native_gemm``/``float16_compute``); default:
        what this machine and device have, ``xla`` last.

        ``mesh`` (a ``jax.sharding.Mesh``, instead of ``device``): the program over its
        devices, partitioned by jax (XLA's kernels); ``batch_axis``: the mesh axis inputs are
        split over along their axis 0; ``weight_sharding``: ``{pattern: PartitionSpec}``,
        weights matching a pattern (fnmatch, over the weight names) split as it says, the
        others replicated (runtime/sharding.py).

        A model with symbolic dimensions (``signature.symbolic``) compiles per input shape at
        the first call with it, keeping the ``max_shapes`` most recently used
        (runtime/polymorphic.py)."""
        options = dict(device=device, float16_compute=float16_compute, embed_weights_bytes=embed_weights_bytes,
                       native_gemm=native_gemm, direct=direct, targets=targets)
        if mesh is not None or batch_axis is not None or weight_sharding is not None:
            options.update(mesh=mesh, batch_axis=batch_axis, weight_sharding=weight_sharding)
        if self.signature is not None and self.signature.symbolic:
            return PolymorphicExecutable(self, options, max_shapes)
        return Executable(self, **options)

    def run_passes(self, passes, *, calibration=None, calibration_method: str = "max",
                   print_ir_after_all: bool = False, print_ir_after: str | Sequence[str] | None = None,
                   print_stats: bool = False) -> list[PassStats]:
        """Run a pass pipeline (a string, names, or pass instances) over this model in
        place, recording the IR after each pass (``ir(after=...)``). ``calibration``: the
        example-argument tuples int8 quantization measures ranges on. Prints the IR after
        every pass or the named ones, and one statistic line per pass on stderr."""
        wanted = {print_ir_after} if isinstance(print_ir_after, str) else set(print_ir_after or ())

        def after_each(name, module, stats):
            text = print_module(module)
            self.record(name, text)
            self.pass_stats.append(stats)
            if print_stats:
                print(stats.line(), file=sys.stderr)
            if print_ir_after_all or name in wanted:
                print_ir_after_step(name, text)

        if isinstance(passes, str) or (passes and isinstance(passes[0], str)):
            passes = pipeline.parse(passes)
        return pipeline.run(self.module, self.pass_resources(calibration, calibration_method), passes, after_each)

    def op_counts(self) -> Counter:
        """The ops that compute, by name (``dialects.module.op_counts``)."""
        return op_counts(self.module)

    def pass_resources(self, calibration=None, calibration_method: str = "max") -> PassResources:
        """What passes over this model read besides the IR: its weights, and with
        ``calibration`` (example-argument tuples) the activation ranges int8 needs."""
        if calibration is None:
            return PassResources(self.weights)
        batches = list(calibration)
        return PassResources(self.weights, functools.partial(
            activation_ranges, weights=self.weights, signature=self.signature, calibration=batches,
            method=calibration_method))

    @property
    def num_parameters(self) -> int:
        return sum(int(a.size) for a in self.weights.arrays.values())

    def save(self, path: str | os.PathLike) -> None:
        manifest = {"jaxlite_version": __version__, "signature": self.signature.to_json(),
                    "metadata": self.metadata}
        fileformat.save(path, manifest, self.ir(), self.weights)

    def export(self, path: str | os.PathLike, dims: dict[str, int] | None = None) -> None:
        """Write the model as a .tflite file that LiteRT runs (Android, iOS, microcontrollers,
        browsers) and Netron opens: float32, float16 and bfloat16 (as float32) with float
        weights, int8-weights and ``dynamic`` as int8 weights with per-channel scales, ``int8``
        with int8 tensors where jaxlite computes in int8. A model with symbolic dimensions is
        written at the sizes ``dims`` gives (``{"b": 1}``). ExportError names an op TFLite
        cannot express; SaveError a file that cannot be written."""
        from jaxlite.compiler.tflite_export import export_tflite

        if Path(path).suffix.lower() != ".tflite":
            raise ExportError(f"cannot export to {os.fspath(path)!r}: the export writes .tflite files "
                              "(name the file NAME.tflite)")
        data = export_tflite(self, description=f"jaxlite {__version__}", dims=dims)
        fileformat.write_file(path, lambda f: f.write(data))

    def graph(self):
        """Nodes of the model graph (see jaxlite.compiler.graph)."""
        return model_graph(self.module)

    def _repr_svg_(self) -> str:
        """Notebook display: the graph (Graphviz when installed, else the built-in layout)."""
        return to_svg(self.graph(), "jaxlite model")

    def _repr_html_(self) -> str:
        """Notebook display: traced IR beside the optimized IR when the history is known."""
        panels = [("optimized" if self.ir_history else "model", self.module)]
        if len(self.ir_history) > 1:
            panels.insert(0, ("traced", parse_module(self.ir(after="trace"))))
        return to_html(panels, repr(self))

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.signature.inputs)
        outs = ", ".join(s.describe() for s in self.signature.outputs)
        n_ops = sum(self.op_counts().values())
        return (f"<jaxlite.Model ({ins}) -> ({outs}); {n_ops} ops, "
                f"{self.num_parameters:,} parameters in {len(self.weights)} weights>")


def print_ir_after_step(name: str, text: str) -> None:
    """The IR after a pipeline step, under mlir-opt's banner."""
    print(f"// -----// IR after {name} //----- //\n{text}", file=sys.stdout)


def load(path: str | os.PathLike) -> Model:
    """Load a .jlite file; needs none of the code that produced it. Whatever the file holds,
    this returns a Model or raises ModelFormatError (tests/test_hostile_files.py)."""
    try:
        return _load(path)
    except ModelFormatError:
        raise
    except Exception as e:  # a check the loader lacks: still the file's fault, not a crash
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelFormatError(f"{path}: damaged or malformed file ({type(e).__name__}: {first[:200]})") from e


def _load(path: str | os.PathLike) -> Model:
    manifest, ir_text, weights = fileformat.load(path)
    module = parse_module(ir_text, f"{path}: model.mlir")
    signature = Signature.from_json(manifest.get("signature", {})) if "signature" in manifest else None
    if signature is None:
        raise ModelFormatError(f"{path}: manifest.json has no signature")
    for op in module.walk():
        if isinstance(op, WeightOp):
            name = op.weight_name
            if name not in weights:
                raise ModelFormatError(f"{path}: the IR uses weight {name!r}, which the file does not hold")
            shape, dtype = shape_dtype(op.result.type)
            arr = weights[name]
            if tuple(arr.shape) != shape or arr.dtype != dtype:
                raise ModelFormatError(f"{path}: weight {name!r} is {arr.dtype.name}{list(arr.shape)}, "
                                       f"the IR expects {dtype.name}{list(shape)}")
    _check_signature_matches(module, signature, path)
    try:
        named = dims.module_symbols(module)
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"{path}: {e}") from None
    given = dims.symbols([s.shape for s in signature.inputs])
    if not named <= set(given):
        raise ModelFormatError(f"{path}: the IR names dimension symbols no input has ({', '.join(sorted(named - set(given)))}); "
                               f"the inputs have {', '.join(given) or 'none'}")
    return Model(module, weights, signature, metadata=dict(manifest.get("metadata") or {}))


def _check_signature_matches(module: ModuleOp, signature: Signature, path) -> None:
    try:
        main = find_main(module)
    except ModelFormatError as e:
        raise ModelFormatError(f"{path}: {e}") from None
    ins = [shape_dtype(t) for t in main.function_type.inputs.data]
    outs = [shape_dtype(t) for t in main.function_type.outputs.data]
    if ins != [(s.shape, s.dtype) for s in signature.inputs] or outs != [(s.shape, s.dtype) for s in signature.outputs]:
        raise ModelFormatError(f"{path}: the manifest's signature does not match the IR's @main")
