"""The ``jaxlite`` command line: convert, ir, run, demo.

User errors (missing file, bad FACTORY, wrong input, damaged model) print one line and exit
with status 1; ``--debug`` shows the traceback instead. Each command imports jax and jaxlite
when it runs (not at the top of this module), so ``jaxlite --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

from jaxlite.timing import interleaved_medians, interleaved_times

EXAMPLES = """examples:
  jaxlite convert examples/digits_mlp.py:factory -o mlp.jlite
  jaxlite convert examples/digits_cnn.py:factory -o cnn.jlite --passes "" --print-ir-after-all
  jaxlite opt cnn.jlite -p canonicalize,cse,dce,fold-affine,fuse -o cnn_opt.jlite --stats
  jaxlite convert examples/digits_cnn.py:factory -o cnn_int8.jlite --quantize int8 --calibration x.npy
  jaxlite report cnn.jlite cnn_int8.jlite --data x_test.npy
  jaxlite ir mlp.jlite
  jaxlite run mlp.jlite --input x.npy --output y.npy
  jaxlite doctor
  jaxlite demo
"""


class UserError(Exception):
    """An error caused by the command line's input; printed as one line."""


def print_table(title: str, headers: list[str], rows: list[tuple], *, stream=None) -> None:
    """A table: rich (colour, borders) in a terminal, aligned plain text when piped."""
    stream = stream or sys.stdout
    if stream.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            table = Table(title=title, header_style="bold cyan")
            for i, h in enumerate(headers):
                table.add_column(h, justify="left" if i == 0 else "right")
            for r in rows:
                table.add_row(*[str(c) for c in r])
            Console(file=stream).print(table)
            return
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    print(title, file=stream)
    print("  ".join(str(h).ljust(w) if i == 0 else str(h).rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))), file=stream)
    for r in rows:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))), file=stream)


def load_factory(spec: str):
    """Import FILE.py and call FACTORY() -> (fn, example_args)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise UserError(f"expected FILE.py:FACTORY, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise UserError(f"no such file: {path}")
    mod_name = f"_jaxlite_user_{abs(hash(str(file.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(mod_name, file)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"cannot import {path} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"{path} has no function {name!r}")
    try:
        result = factory()
    except Exception as e:
        raise UserError(f"{name}() in {path} failed: {type(e).__name__}: {e}") from e
    if not (isinstance(result, tuple | list) and len(result) == 2 and callable(result[0])):
        raise UserError(f"{name}() must return (fn, example_args), got {type(result).__name__}")
    fn, args = result
    if not isinstance(args, tuple | list):
        args = (args,)
    return fn, tuple(args)


def load_arrays(path: str, signature, what: str = "input") -> list[np.ndarray]:
    """The arrays of a .npy (one input) or .npz file, in the model's input order: .npz
    arrays matched to inputs by name (``Signature.match_named``: an input's name or its last
    part, e.g. ``u`` for ``inp['u']``), or in order when saved unnamed."""
    if not Path(path).is_file():
        raise UserError(f"no such {what} file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            return [data]
        with data:
            arrays = {name: data[name] for name in data.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise UserError(f"{path} holds Python objects (refused: arrays of numbers only)") from None
        raise UserError(f"cannot read {path} as .npy/.npz: {e}") from None
    except Exception as e:
        raise UserError(f"cannot read {path} as .npy/.npz: {e}") from None
    try:
        order = signature.match_named(list(arrays))
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    return list(arrays.values()) if order is None else [arrays[name] for name in order]


def _read_inputs(paths: list[str], model) -> list:
    specs = model.signature.inputs
    arrays = [a for p in paths for a in load_arrays(p, model.signature)]
    if len(arrays) != len(specs):
        raise UserError(f"the model takes {len(specs)} input arrays "
                        f"({model.signature.describe_inputs()}), got {len(arrays)}")
    return arrays


def _outputs_option(text: str | None):
    if text is None:
        return None
    parts = [int(p) if p.strip().lstrip("-").isdigit() else p.strip() for p in text.split(",")]
    return parts[0] if len(parts) == 1 else parts


def _print_after(args) -> list[str] | None:
    return args.print_ir_after or None


# With a symbolic batch, data files are cut into batches of at most this many samples.
MAX_DYNAMIC_BATCH = 1024


def _symbolic_batch(signature) -> bool:
    """Whether every input of rank >= 1 has a symbolic axis 0 (the model takes any batch)."""
    from jaxlite.dialects import dims

    batched = [s for s in signature.inputs if s.shape]
    return bool(batched) and all(dims.is_symbolic(s.shape[0]) for s in batched)


def read_batches(path: str, signature) -> list[tuple]:
    """Batches of example arguments from a .npy (single input) or .npz (one array per input,
    see ``load_arrays``): samples along axis 0, cut into the model's batch size (a model
    with a symbolic batch takes them all, up to MAX_DYNAMIC_BATCH per batch)."""
    from jaxlite.dialects import dims

    specs = signature.inputs
    arrays = load_arrays(path, signature, "data")
    if len(arrays) != len(specs):
        raise UserError(f"{path} holds {len(arrays)} arrays, the model takes {len(specs)} inputs")
    if any(a.ndim == 0 for a in arrays):
        raise UserError(f"{path}: arrays need samples along axis 0")
    dynamic = _symbolic_batch(signature)
    samples = min(len(a) for a in arrays)
    fixed = [s.shape[0] for s in specs if s.shape and not dims.is_symbolic(s.shape[0])]
    if not dynamic and len(fixed) != len([s for s in specs if s.shape]):
        raise UserError(f"{path}: the model's inputs mix a fixed and a symbolic axis 0 ({signature.describe_inputs()}): "
                        "give one .npy per input with --input instead")
    batch = min(samples, MAX_DYNAMIC_BATCH) if dynamic else (fixed[0] if fixed else 1)
    if samples == 0:
        raise UserError(f"{path} holds no samples")
    out = []
    for i in range(0, samples, batch):
        leaves = []
        for a, s in zip(arrays, specs, strict=True):
            part = a[i:min(i + batch, samples)]
            if dynamic:  # any batch: the model checks the other dimensions when it runs
                if part.ndim != len(s.shape):
                    raise UserError(f"{path}: samples of shape {a.shape[1:]} do not fit input {s.name} "
                                    f"({s.describe()})")
                leaves.append(part.astype(s.dtype))
                continue
            if len(part) < batch:  # the model's batch is fixed: pad the last one with its last sample
                part = np.concatenate([part, np.repeat(part[-1:], batch - len(part), axis=0)])
            try:
                if dims.is_static_shape(s.shape):
                    part = part.reshape(s.shape)
                elif part.ndim != len(s.shape):  # other symbolic dimensions: the model checks them
                    raise ValueError
                leaves.append(part.astype(s.dtype))
            except ValueError:
                raise UserError(f"{path}: samples of shape {a.shape[1:]} do not fit input {s.name} "
                                f"({s.describe()})") from None
        out.append(tuple(signature.in_tree.unflatten(leaves)))
    if samples % batch and not dynamic:
        print(f"{path}: {samples} samples in {len(out)} batches of {batch} (the last padded with "
              f"{batch - samples % batch} copies of its last sample)", file=sys.stderr)
    return out


def cmd_convert(args) -> None:
    import jaxlite

    fn, example_args = load_factory(args.factory)
    calibration = None
    if args.calibration:
        probe = jaxlite.convert(fn, *example_args, passes="", dynamic_batch=args.dynamic_batch)
        calibration = read_batches(args.calibration, probe.signature)
    model = jaxlite.convert(fn, *example_args, passes=args.passes, outputs=_outputs_option(args.outputs),
                            dynamic_batch=args.dynamic_batch,
                            quantize=args.quantize, calibration=calibration,
                            per_channel=not args.per_tensor, skip=args.skip,
                            print_ir_after_all=args.print_ir_after_all,
                            print_ir_after=_print_after(args), print_stats=args.stats)
    model.save(args.output)
    size = Path(args.output).stat().st_size
    print(f"wrote {args.output}: {model}; {size:,} bytes")


def cmd_opt(args) -> None:
    """Run a pass pipeline over a .jlite file (or IR text), like mlir-opt."""
    import jaxlite
    from jaxlite.compiler.model import Model
    from jaxlite.dialects.jlax import WeightOp
    from jaxlite.dialects.module import parse_module, print_module
    from jaxlite.dialects.weights import WeightStore
    from jaxlite.passes import pipeline

    path = Path(args.input)
    if not path.is_file():
        raise UserError(f"no such file: {args.input}")
    is_text = path.suffix in (".mlir", ".txt")
    if is_text:
        module = parse_module(path.read_text(), str(path))
        model = Model(module, WeightStore(), signature=None)
    else:
        model = jaxlite.load(path)
    passes = pipeline.parse(args.pipeline)
    if is_text and any(isinstance(op, WeightOp) for op in model.module.walk()):
        raise UserError("IR text refers to weights (jlax.weight); run opt on the .jlite file instead")
    calibration = None
    if args.calibration:
        if is_text:
            raise UserError("--calibration runs the model: give a .jlite file, not IR text")
        calibration = read_batches(args.calibration, model.signature)
    model.run_passes(passes, calibration=calibration, print_ir_after_all=args.print_ir_after_all,
                     print_ir_after=args.print_ir_after, print_stats=args.stats)
    out = args.output
    if out is None or out == "-":
        print(print_module(model.module), end="")
    elif out.endswith(".jlite"):
        if is_text:
            raise UserError("IR text has no signature: write the result as .mlir")
        model.save(out)
        print(f"wrote {out}: {model}", file=sys.stderr)
    else:
        Path(out).write_text(print_module(model.module))


def cmd_report(args) -> None:
    import json

    import jaxlite

    float_model, quant_model = jaxlite.load(args.float_model), jaxlite.load(args.quant_model)
    batches = read_batches(args.data, float_model.signature)
    report = jaxlite.quantization_report(float_model, quant_model, batches[: args.batches])
    print(json.dumps(report.to_dict(), indent=1) if args.json else report)
    if args.node_data:
        from jaxlite.compiler.graph import model_graph
        from jaxlite.model_explorer.graph_json import node_data

        values = {e.weight: round(e.sqnr_db, 2) for e in report.layers}
        nodes = model_graph(quant_model.module)
        # quantized kernels are named <float kernel>.q / .f16: match on the float name
        Path(args.node_data).write_text(node_data(values, nodes, "local SQNR dB"))
        print(f"wrote {args.node_data}: overlay with model-explorer {args.quant_model} "
              f"--extensions=jaxlite.model_explorer --node_data_paths={args.node_data}", file=sys.stderr)


def parse_sizes(items: list[str] | None) -> dict[str, int]:
    """``--dim b=64 --dim t=16`` -> {"b": 64, "t": 16}."""
    sizes = {}
    for item in items or ():
        name, eq, value = item.partition("=")
        if not eq or not name.strip().isidentifier() or not value.strip().isdigit() or int(value) < 1:
            raise UserError(f"--dim expects NAME=SIZE with SIZE >= 1, e.g. b=64; got {item!r}")
        sizes[name.strip()] = int(value)
    return sizes


def concrete_shapes(signature, sizes: dict[str, int]) -> list[tuple[int, ...]]:
    """The input shapes with each symbolic dimension's symbols at ``sizes`` (1 where not given)."""
    from jaxlite.dialects import dims

    symbols = signature.symbols()
    unknown = sorted(set(sizes) - set(symbols))
    if unknown:
        raise UserError(f"--dim {', '.join(unknown)}: the model has no such dimension"
                        + (f" (its symbols: {', '.join(symbols)})" if symbols else " (its shapes are fixed)"))
    env = {name: sizes.get(name, 1) for name in symbols}
    return [tuple(dims.evaluate(d, env) for d in spec.shape) for spec in signature.inputs]


def random_inputs(signature, seed: int = 0, sizes: dict[str, int] | None = None) -> list:
    """Inputs of the right shapes and dtypes: normal floats, small non-negative ints; symbolic
    dimensions at ``sizes`` (1 where not given)."""
    rng = np.random.default_rng(seed)
    leaves = []
    for spec, shape in zip(signature.inputs, concrete_shapes(signature, sizes or {}), strict=True):
        if spec.dtype.kind == "f":
            leaves.append(rng.standard_normal(shape).astype(spec.dtype))
        elif spec.dtype.kind == "b":
            leaves.append(rng.random(shape) > 0.5)
        else:
            leaves.append(rng.integers(0, 8, shape).astype(spec.dtype))
    return leaves


def _batches_for(args, model) -> list[tuple]:
    """Argument tuples: random, from one data file (cut into batches), or one .npy per input."""
    if not args.input:
        leaves = random_inputs(model.signature, args.seed, parse_sizes(args.dim))
        return [tuple(model.signature.in_tree.unflatten(leaves))]
    if len(args.input) == 1 and len(model.signature.inputs) >= 1:
        return read_batches(args.input[0], model.signature)
    return [tuple(model.signature.in_tree.unflatten(_read_inputs(args.input, model)))]


def cmd_summary(args) -> None:
    import jaxlite
    from jaxlite.compiler import summary

    first = summary.summarize(jaxlite.load(args.model), args.model)
    if args.other is None:
        print_table(f"{args.model}", ["", "value"], summary.rows(first))
        return
    second = summary.summarize(jaxlite.load(args.other), args.other)
    print_table(f"{args.model} vs {args.other}", ["", Path(args.model).name, Path(args.other).name, "ratio"],
                summary.side_by_side(first, second))


def cmd_graph(args) -> None:
    import jaxlite
    from jaxlite.compiler import graph, summary
    from jaxlite.dialects.module import parse_module

    model = jaxlite.load(args.model)
    nodes = graph.model_graph(model.module)
    out = args.output
    if out.endswith(".dot"):
        Path(out).write_text(graph.to_dot(nodes, Path(args.model).name))
    elif out.endswith(".svg"):
        Path(out).write_text(graph.to_svg(nodes, Path(args.model).name, use_graphviz=True))
    elif out.endswith(".html"):
        panels = [(Path(args.model).name, model.module)]
        if args.before:
            before = jaxlite.load(args.before) if args.before.endswith(".jlite") else None
            module = before.module if before else parse_module(Path(args.before).read_text(), args.before)
            panels.insert(0, (f"before: {Path(args.before).name}", module))
        text = "\n".join(f"{k}: {v}" for k, v in summary.rows(summary.summarize(model, args.model))[:3])
        Path(out).write_text(graph.to_html(panels, f"jaxlite: {Path(args.model).name}", text))
    elif out.endswith(".json"):
        import json

        from jaxlite.model_explorer.graph_json import me_graph_dict
        Path(out).write_text(json.dumps({"graphs": [me_graph_dict(nodes)]}, indent=1))
    else:
        raise UserError("the graph output must end in .svg, .html, .dot or .json")
    print(f"wrote {out} ({sum(model.op_counts().values())} ops)")


def cmd_bench(args) -> None:
    import os

    if args.threads is not None:  # read by XLA when its CPU client starts: before any computation
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + (
            " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if args.threads == 1
            else f" intra_op_parallelism_threads={args.threads}")).strip()
    import jax

    import jaxlite

    model = jaxlite.load(args.model)
    inputs = _batches_for(args, model)[0]
    fns = {"jaxlite": model.compile(device=args.device)}
    if args.against:
        fn, _ = load_factory(args.against)
        fns["jax.jit"] = jax.jit(fn)
    times = interleaved_times(fns, inputs, args.reps, progress=True)
    first = np.shape(jax.tree_util.tree_leaves(inputs)[0]) if model.signature.inputs else ()
    batch = first[0] if first else 1
    rows = []
    for name, ts in times.items():
        med, p90 = float(np.median(ts)), float(np.percentile(ts, 90))
        row = [name, f"{med * 1e3:.3f} ms", f"{p90 * 1e3:.3f} ms", f"{1 / med:,.0f}/s", f"{batch / med:,.0f}/s"]
        if "jax.jit" in times:
            row.append(f"{med / float(np.median(times['jax.jit'])):.3f}")
        rows.append(tuple(row))
    headers = ["", "median", "p90", "calls", "samples"] + (["ratio vs jax.jit"] if "jax.jit" in times else [])
    threads = args.threads if args.threads is not None else "default"
    print_table(f"{args.model}: {args.reps} interleaved calls, threads={threads}, {jax.devices()[0].platform}",
                headers, rows)


def cmd_compare(args) -> None:
    import jax

    import jaxlite

    first = jaxlite.load(args.model)
    if args.other.endswith(".jlite"):
        other = jaxlite.load(args.other).compile()
        batches = _batches_for(args, first)
    else:
        fn, example = load_factory(args.other)
        other = jax.jit(fn)
        batches = _batches_for(args, first) if (args.input or args.random) else [tuple(example)]
    exe = first.compile()
    runs_a = [[np.asarray(x) for x in jax.tree_util.tree_leaves(exe(*b))] for b in batches]
    runs_b = [[np.asarray(x) for x in jax.tree_util.tree_leaves(other(*b))] for b in batches]
    a, b = _joined(runs_a), _joined(runs_b)
    if len(a) != len(b):
        raise UserError(f"the models have {len(a)} and {len(b)} outputs")
    rows = []
    for spec, x, y in zip(first.signature.outputs, a, b, strict=True):
        if x.shape != y.shape:
            raise UserError(f"output {spec.name}: shapes {x.shape} and {y.shape} differ")
        d = np.abs(x.astype(np.float64) - y.astype(np.float64))
        ref = np.max(np.abs(y.astype(np.float64))) if y.size else 0.0
        agree = "-"
        if x.ndim >= 1 and x.shape[-1] > 1 and x.dtype.kind == "f":
            agree = f"{float(np.mean(x.argmax(-1) == y.argmax(-1))) * 100:.1f}%"
        rows.append((spec.name, f"{d.max() if d.size else 0:.3g}", f"{(d.max() / ref) if ref else 0:.3g}", agree))
    print_table(f"{args.model} vs {args.other} ({len(batches)} batch{'es' if len(batches) > 1 else ''})",
                ["output", "max abs err", "max rel err", "argmax agreement"], rows)


def _joined(runs: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Each output over all batches: stacked when every batch gave the same shape, else (a
    model with a symbolic batch, the last batch smaller) concatenated along the batch axis."""
    out = []
    for i in range(len(runs[0])):
        parts = [r[i] for r in runs]
        same = all(p.shape == parts[0].shape for p in parts)
        out.append(np.stack(parts) if same or parts[0].ndim == 0 else np.concatenate(parts))
    return out


def cmd_ir(args) -> None:
    import jaxlite

    print(jaxlite.load(args.model).ir(generic=args.generic), end="")


def cmd_export(args) -> None:
    import jaxlite
    from jaxlite.compiler.tflite_writer import builtin_counts

    output = args.output or str(Path(args.model).with_suffix(".tflite"))
    model = jaxlite.load(args.model)
    model.export(output, dims=parse_sizes(args.dim) or None)
    counts = builtin_counts(Path(output).read_bytes())
    ops = ", ".join(f"{name} x{n}" for name, n in counts.items())
    print(f"wrote {output}: {sum(counts.values())} TFLite ops ({ops}); {Path(output).stat().st_size:,} bytes")


def cmd_run(args) -> None:
    import os

    if args.devices < 1:
        raise UserError(f"--devices must be >= 1, got {args.devices}")
    if args.devices > 1 and (args.device or "cpu").lower() == "cpu":  # read when jax's CPU client starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.devices}").strip()
    import jax

    import jaxlite

    model = jaxlite.load(args.model)
    leaves = _read_inputs(args.input, model)
    inputs = model.signature.in_tree.unflatten(leaves)
    if args.devices > 1:
        kind = (args.device or jax.default_backend()).lower()
        try:
            devices = jax.devices(kind)
        except RuntimeError:
            devices = []
        if len(devices) < args.devices:
            raise UserError(f"--devices {args.devices}: jax sees {len(devices)} {kind} device(s)")
        mesh = jax.make_mesh((args.devices,), ("data",), devices=devices[: args.devices])
        exe = model.compile(mesh=mesh, batch_axis="data")
    else:
        exe = model.compile(device=args.device)
    out = exe(*inputs)
    out_leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(out)]
    for spec, arr in zip(model.signature.outputs, out_leaves, strict=True):
        flat = arr.reshape(-1)
        preview = np.array2string(flat[:6], precision=4, separator=", ")
        print(f"{spec.name}: {arr.dtype.name}{list(arr.shape)} {preview}{' ...' if flat.size > 6 else ''}")
    if args.output:
        if len(out_leaves) == 1 and args.output.endswith(".npy"):
            np.save(args.output, out_leaves[0])
        else:
            np.savez(args.output, **{s.name: a for s, a in zip(model.signature.outputs, out_leaves, strict=True)})
        print(f"wrote {args.output}")


def cmd_doctor(args) -> None:
    """The CPU, its features and each kernel target: what compile() will use here."""
    from jaxlite import doctor

    rows = doctor.report()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:{width}s}  {value}")


def cmd_demo(args) -> None:
    """Convert the digits CNN, quantize it every way, save, load, run: sizes, accuracy, speed."""
    import tempfile

    import jax

    import jaxlite
    from jaxlite.examples import digits, digits_cnn

    print("training the digits CNN (Conv-BatchNorm-ReLU-MaxPool, Conv-BatchNorm-ReLU, Dense) ...")
    model_def, variables = digits_cnn.trained()
    x_train, _, x_test, y_test = digits.load(images=True)

    def predict(x):
        return model_def.apply(variables, x, train=False)

    batch = x_test[:64]
    n = len(x_test) // 64 * 64
    ref_fn = jax.jit(predict)
    ref = np.concatenate([np.asarray(ref_fn(x_test[i:i + 64])) for i in range(0, n, 64)])
    print(f"jax.jit float32: test accuracy {digits.accuracy(ref, y_test[:n]):.4f}")
    print(f"{'jaxlite model':14s} {'file bytes':>10s} {'size':>6s} {'accuracy':>9s} {'latency':>9s} {'vs jax.jit':>10s}")
    calibration = [(x_train[i:i + 64],) for i in range(0, 512, 64)]
    float_size = None
    with tempfile.TemporaryDirectory() as tmp:
        for mode in (None, "float16", "bfloat16", "int8-weights", "dynamic", "int8"):
            model = jaxlite.convert(predict, batch, quantize=mode,
                                    calibration=calibration if mode == "int8" else None)
            path = Path(tmp) / f"digits_cnn.{mode or 'float32'}.jlite"
            model.save(path)
            size = path.stat().st_size
            float_size = float_size or size
            exe = jaxlite.load(path).compile()
            ours = np.concatenate([np.asarray(exe(x_test[i:i + 64])) for i in range(0, n, 64)])
            t = interleaved_medians({"jit": ref_fn, "ours": exe}, (batch,), reps=50)
            print(f"{mode or 'float32':14s} {size:10,d} {size / float_size:5.2f}x "
                  f"{digits.accuracy(ours, y_test[:n]):9.4f} {t['ours'] * 1e6:7.0f}us {t['ours'] / t['jit']:9.2f}x")
    print("\n(latency: batch of 64, median of 50 calls interleaved with jax.jit's; "
          "more in benchmarks/. The IR: jaxlite convert ... --print-ir-after-all)")


def _add_inspection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after tracing and every pass")
    p.add_argument("--print-ir-after", action="append", metavar="NAME",
                   help="print the IR after this pass (or 'trace'); repeatable")
    p.add_argument("--stats", action="store_true", help="one line per pass: ops before -> after, weight bytes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxlite", description="The TFLite converter for JAX.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="trace FILE.py:FACTORY and write a .jlite model",
                       epilog="example: jaxlite convert examples/digits_mlp.py:factory -o mlp.jlite")
    p.add_argument("factory", help="FILE.py:FACTORY, where FACTORY() returns (fn, example_args)")
    p.add_argument("-o", "--output", required=True, help="the .jlite file to write")
    p.add_argument("--passes", default=None,
                   help='pass pipeline (default: the standard one; "" for none), e.g. "canonicalize,cse,dce"')
    p.add_argument("--outputs", default=None,
                   help="keep only these outputs: an index or key, or a comma-separated list of them")
    _add_inspection_flags(p)
    p.add_argument("--quantize", choices=["float16", "bfloat16", "int8-weights", "dynamic", "int8"], default=None)
    p.add_argument("--calibration", help="representative inputs for --quantize int8 (.npy/.npz, samples on axis 0)")
    p.add_argument("--per-tensor", action="store_true", help="one scale per weight instead of per output channel")
    p.add_argument("--skip", action="append", metavar="PATTERN", help="weight/op name pattern kept in float")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="axis 0 of every input becomes a symbolic batch b: the model runs at any batch size")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("report", help="per-layer error of a quantized model against its float model",
                       epilog="example: jaxlite report cnn.jlite cnn_int8.jlite --data x_test.npy")
    p.add_argument("float_model")
    p.add_argument("quant_model")
    p.add_argument("--data", required=True, help="inputs (.npy/.npz, samples on axis 0)")
    p.add_argument("--batches", type=int, default=8, help="at most this many batches (default 8)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--node-data", metavar="FILE.json", help="also write the SQNR per node for Model Explorer")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("opt", help="run passes over a .jlite model or IR text (like mlir-opt)",
                       epilog="example: jaxlite opt m.jlite -p canonicalize,cse,dce -o m_opt.jlite")
    p.add_argument("input", help=".jlite model, or .mlir text without weights")
    p.add_argument("-p", "--pipeline", required=True, help='e.g. "canonicalize,cse,dce,fold-affine,fuse"')
    p.add_argument("-o", "--output", default=None, help=".jlite or .mlir to write (default: print the IR)")
    p.add_argument("--calibration", help='representative inputs for "quantize{mode=int8}" (.npy/.npz, samples on axis 0)')
    _add_inspection_flags(p)
    p.set_defaults(run=cmd_opt)

    p = sub.add_parser("ir", help="print a model's IR",
                       epilog="examples: jaxlite ir mlp.jlite | less; jaxlite ir mlp.jlite --generic > mlp.mlir "
                              "(opens in Netron)")
    p.add_argument("model")
    p.add_argument("--generic", action="store_true",
                   help="MLIR's generic op form, readable by tools that do not know jaxlite's dialects (Netron)")
    p.set_defaults(run=cmd_ir)

    p = sub.add_parser("export", help="write a .jlite model as a .tflite file (LiteRT, Netron)",
                       epilog="example: jaxlite export mlp.jlite -o mlp.tflite")
    p.add_argument("model")
    p.add_argument("-o", "--output", default=None, help=".tflite to write (default: the model's name with .tflite)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="the size of a symbolic dimension (a model converted with --dynamic-batch: --dim b=1)")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("run", help="run a model on inputs from .npy/.npz files",
                       epilog="example: jaxlite run mlp.jlite --input x.npy --output y.npy")
    p.add_argument("model")
    p.add_argument("--input", action="append", default=[], help=".npy per input (repeat), or one .npz")
    p.add_argument("--output", help="write outputs to .npy (one output) or .npz")
    p.add_argument("--device", default=None, help="cpu or gpu (default: jax's default)")
    p.add_argument("--devices", type=int, default=1, metavar="N",
                   help="data-parallel over N devices of that kind, the batch split along axis 0 "
                        "(on CPU: N host devices)")
    p.set_defaults(run=cmd_run)

    p = sub.add_parser("summary", help="inputs, outputs, ops, parameters, bytes by dtype, file composition",
                       epilog="examples:\n  jaxlite summary cnn.jlite\n  jaxlite summary cnn.jlite cnn_int8.jlite   # side by side",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("other", nargs="?", help="a second model to compare with")
    p.set_defaults(run=cmd_summary)

    p = sub.add_parser("graph", help="draw the model (.svg needs Graphviz; .html, .dot, .json do not)",
                       epilog="examples:\n  jaxlite graph cnn.jlite -o cnn.svg\n"
                              "  jaxlite graph cnn_opt.jlite -o cnn.html --before cnn_raw.jlite   # before/after\n"
                              "  model-explorer cnn.jlite --extensions=jaxlite.model_explorer",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help=".svg, .html, .dot or .json (Model Explorer graph)")
    p.add_argument("--before", help="(html) another model or IR text drawn beside it, e.g. the unoptimized one")
    p.set_defaults(run=cmd_graph)

    p = sub.add_parser("bench", help="median/p90 latency and throughput, optionally against jax.jit",
                       epilog="example: jaxlite bench cnn.jlite --against examples/digits_cnn.py:factory --threads 1",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--against", metavar="FILE.py:FACTORY", help="also time jax.jit of the source function")
    p.add_argument("--threads", type=int, default=None, help="XLA:CPU threads (1 = single-threaded)")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--input", action="append", default=[], help=".npy/.npz inputs (default: random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dim", action="append", metavar="NAME=SIZE",
                   help="size of a symbolic dimension for random inputs (repeat; default 1), e.g. b=64")
    p.add_argument("--device", default=None)
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("compare", help="outputs of two models, or of a model and its source function",
                       epilog="examples:\n  jaxlite compare cnn.jlite cnn_int8.jlite --input x.npy\n"
                              "  jaxlite compare cnn.jlite examples/digits_cnn.py:factory",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("other", help="a .jlite model or FILE.py:FACTORY")
    p.add_argument("--input", action="append", default=[], help=".npy/.npz inputs (default: random, or the factory's)")
    p.add_argument("--random", action="store_true", help="random inputs even against a factory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dim", action="append", metavar="NAME=SIZE",
                   help="size of a symbolic dimension for random inputs (repeat; default 1), e.g. b=64")
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser("doctor", help="the CPU, its ISA features and the kernel targets jaxlite can use here")
    p.set_defaults(run=cmd_doctor)

    p = sub.add_parser("demo", help="convert, quantize, save, load and run the digits CNN; print sizes, accuracy, speed")
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from jaxlite.errors import JaxliteError

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (UserError, JaxliteError, OSError) as e:
        if args.debug:
            raise
        print(f"jaxlite: error: {e}".splitlines()[0] if isinstance(e, OSError) else f"jaxlite: error: {e}",
              file=sys.stderr)
        return 1
    except Exception as e:  # a case jaxlite does not check for yet: still no traceback by default
        if args.debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"jaxlite: internal error: {type(e).__name__}: {first[:300]} (--debug shows the traceback; "
              "please report it)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
