"""The command line, run as a user runs it (subprocess)."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxlite

ROOT = Path(__file__).resolve().parent.parent


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "jaxlite", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_convert_ir_run_round_trip(tmp_path):
    factory = tmp_path / "tiny.py"
    factory.write_text(
        "import jax.numpy as jnp, numpy as np\n"
        "W = jnp.asarray(np.arange(12, dtype=np.float32).reshape(4, 3) / 10)\n"
        "def factory():\n"
        "    return (lambda x: jnp.tanh(x @ W)), (np.ones((2, 4), np.float32),)\n")
    model_path = tmp_path / "tiny.jlite"
    r = run("convert", f"{factory}:factory", "-o", str(model_path))
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and model_path.is_file()

    r = run("ir", str(model_path))
    assert r.returncode == 0 and "jfuse.dot" in r.stdout and "activation = #jfuse<activation tanh>" in r.stdout
    assert "jlax.weight @W" in r.stdout

    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("run", str(model_path), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"))
    assert r.returncode == 0, r.stderr
    y = np.load(tmp_path / "y.npy")
    W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    np.testing.assert_allclose(y, np.tanh(x @ W), rtol=1e-5)
    np.testing.assert_allclose(y, np.asarray(jaxlite.load(model_path).compile()(x)), rtol=0)

    r = run("ir", str(model_path), "--generic")
    assert r.returncode == 0 and '"jfuse.dot"(' in r.stdout, r.stderr
    r = run("export", str(model_path))  # default output: the model's name with .tflite
    assert r.returncode == 0 and "FULLY_CONNECTED x1" in r.stdout, r.stderr
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = litert.Interpreter(model_path=str(tmp_path / "tiny.tflite"))
    np.testing.assert_allclose(interpreter.get_signature_runner()(x=x)["out"], y, rtol=1e-5)


def test_user_errors_are_one_line_without_traceback(tmp_path):
    r = run("ir", str(tmp_path / "missing.jlite"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "no such file" in r.stderr
    r = run("convert", "nofile.py:factory", "-o", str(tmp_path / "m.jlite"))
    assert r.returncode == 1 and "no such file: nofile.py" in r.stderr
    r = run("convert", "just_a_name", "-o", str(tmp_path / "m.jlite"))
    assert r.returncode == 1 and "FILE.py:FACTORY" in r.stderr
    bad = tmp_path / "bad.jlite"
    bad.write_text("junk")
    r = run("run", str(bad), "--input", "x.npy")
    assert r.returncode == 1 and "not a zip" in r.stderr


def test_wrong_input_shape_on_the_cli(tmp_path):
    factory = tmp_path / "f.py"
    factory.write_text("import numpy as np\ndef factory():\n    return (lambda x: x * 2), (np.ones(3, np.float32),)\n")
    model_path = tmp_path / "f.jlite"
    assert run("convert", f"{factory}:factory", "-o", str(model_path)).returncode == 0
    np.save(tmp_path / "x.npy", np.ones(4, np.float32))
    r = run("run", str(model_path), "--input", str(tmp_path / "x.npy"))
    assert r.returncode == 1 and "expected float32[3], got float32[4]" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("--debug", "run", str(model_path), "--input", str(tmp_path / "x.npy"))
    assert "Traceback" in r.stderr


def test_example_factories_convert_from_the_cli(tmp_path):
    out = tmp_path / "mlp.jlite"
    r = run("convert", str(ROOT / "examples" / "digits_mlp.py") + ":factory", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert jaxlite.load(out).num_parameters == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


def test_convert_with_pass_options_and_opt(tmp_path):
    cnn = str(ROOT / "examples" / "digits_cnn.py") + ":factory"
    raw = tmp_path / "raw.jlite"
    r = run("convert", cnn, "-o", str(raw), "--passes", "", "--print-ir-after-all")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("// -----// IR after") == 1 and "IR after trace" in r.stdout
    assert "jlax.rsqrt" in jaxlite.load(raw).ir()

    opt = tmp_path / "opt.jlite"
    r = run("opt", str(raw), "-p", "canonicalize,cse,dce,fold-affine,fuse", "-o", str(opt), "--stats",
            "--print-ir-after", "fuse")
    assert r.returncode == 0, r.stderr
    assert "fold-affine: " in r.stderr and r.stdout.count("IR after fuse") == 1
    text = jaxlite.load(opt).ir()
    assert text.count("jfuse.conv") == 2 and "jlax.rsqrt" not in text
    x = np.random.default_rng(0).standard_normal((64, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(jaxlite.load(opt).compile()(x)),
                               np.asarray(jaxlite.load(raw).compile()(x)), rtol=1e-4, atol=1e-5)

    r = run("opt", str(raw), "-p", "canonicalize,nonsense")
    assert r.returncode == 1 and "available passes" in r.stderr

    mlir = tmp_path / "f.mlir"
    mlir.write_text(jaxlite.convert(lambda a: 3 * a + 4 * a + 5 * a, np.ones(3, np.float32), passes="").ir())
    r = run("opt", str(mlir), "-p", "canonicalize")
    assert r.returncode == 0 and r.stdout.count("jlax.mul") == 1 and "1.200000e+01" in r.stdout


def test_convert_outputs_option(tmp_path):
    factory = tmp_path / "two.py"
    factory.write_text("import jax.numpy as jnp, numpy as np\n"
                       "def factory():\n    return (lambda x: {'a': x * 2, 'b': jnp.exp(x)}), (np.ones(3, np.float32),)\n")
    out = tmp_path / "a.jlite"
    r = run("convert", f"{factory}:factory", "-o", str(out), "--outputs", "a")
    assert r.returncode == 0, r.stderr
    model = jaxlite.load(out)
    assert len(model.signature.outputs) == 1 and "jlax.exp" not in model.ir()


def test_quantize_and_report_from_the_cli(tmp_path):
    from jaxlite.examples import digits

    x_train, _, x_test, _ = digits.load(images=True)
    np.save(tmp_path / "cal.npy", x_train[:256])
    np.save(tmp_path / "test.npy", x_test[:128])
    cnn = str(ROOT / "examples" / "digits_cnn.py") + ":factory"
    f, q = tmp_path / "f.jlite", tmp_path / "q.jlite"
    assert run("convert", cnn, "-o", str(f)).returncode == 0
    r = run("convert", cnn, "-o", str(q), "--quantize", "int8", "--calibration", str(tmp_path / "cal.npy"))
    assert r.returncode == 0, r.stderr
    assert "jquant.qconv" in jaxlite.load(q).ir()
    r = run("report", str(f), str(q), "--data", str(tmp_path / "test.npy"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "worst first" in lines[0] and len(lines) == 5 and "params.Conv_1" in r.stdout
    r = run("convert", cnn, "-o", str(q), "--quantize", "int8")
    assert r.returncode == 1 and "needs calibration data" in r.stderr


def _models(tmp_path):
    cnn = str(ROOT / "examples" / "digits_cnn.py") + ":factory"
    f, raw = tmp_path / "cnn.jlite", tmp_path / "raw.jlite"
    assert run("convert", cnn, "-o", str(f)).returncode == 0
    assert run("convert", cnn, "-o", str(raw), "--passes", "").returncode == 0
    return cnn, f, raw


def test_summary_graph_bench_compare(tmp_path):
    cnn, f, raw = _models(tmp_path)
    q = tmp_path / "dyn.jlite"
    assert run("convert", cnn, "-o", str(q), "--quantize", "dynamic").returncode == 0

    r = run("summary", str(f))
    assert r.returncode == 0 and "x: float32[64,8,8,1]" in r.stdout and "jfuse.conv" in r.stdout
    assert "9,930 in 6 weights" in r.stdout and "IR text" in r.stdout and "\x1b[" not in r.stdout  # plain when piped
    r = run("summary", str(f), str(q))
    assert r.returncode == 0 and "jquant.dynamic_conv" in r.stdout and "ratio" in r.stdout
    weight_row = next(line for line in r.stdout.splitlines() if line.startswith("weight bytes"))
    assert float(weight_row.split()[-1].rstrip("x")) < 0.3

    dot = tmp_path / "g.dot"
    r = run("graph", str(f), "-o", str(dot))
    assert r.returncode == 0, r.stderr
    text = dot.read_text()
    model = jaxlite.load(f)
    compute = [op for op in model.module.walk() if op.name.startswith(("jfuse", "jlax.reduce", "jlax.reshape"))]
    assert text.count("->") == len(compute) + 1  # a chain: input -> 5 ops -> output
    for name in ("conv + relu", "reduce_window_max", "reshape", "dot", "params.Conv_0.kernel.folded"):
        assert name in text

    html = tmp_path / "g.html"
    r = run("graph", str(f), "-o", str(html), "--before", str(raw))
    assert r.returncode == 0 and "<svg" in html.read_text() and "before: raw.jlite" in html.read_text()
    svg = tmp_path / "g.svg"
    r = run("graph", str(f), "-o", str(svg))
    if shutil.which("dot"):
        assert r.returncode == 0 and "<svg" in svg.read_text() and "conv + relu" in svg.read_text()
    else:
        assert r.returncode == 1 and "apt-get install graphviz" in r.stderr

    r = run("bench", str(f), "--against", cnn, "--reps", "5", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "jax.jit" in r.stdout and "ratio vs jax.jit" in r.stdout and "threads=1" in r.stdout

    r = run("compare", str(f), cnn)
    assert r.returncode == 0 and "100.0%" in r.stdout
    r = run("compare", str(f), str(q), "--random")
    assert r.returncode == 0 and "argmax agreement" in r.stdout


def test_graph_content_matches_ir_edges():
    from jaxlite.compiler.graph import model_graph, to_dot
    from jaxlite.examples import transformer

    fn, args = transformer.factory()
    model = jaxlite.convert(fn, *args)
    nodes = model_graph(model.module)
    from xdsl.dialects import func
    main = next(op for op in model.module.ops if isinstance(op, func.FuncOp))
    shown = [op for op in main.body.block.ops if op.name not in ("jlax.weight", "jlax.constant", "func.return")]
    assert [n.kind for n in nodes if n.kind not in ("input", "output")] == [op.name for op in shown]
    # every SSA use between shown ops is an edge
    ids = {op: n.id for op, n in zip(shown, [n for n in nodes if n.kind not in ("input", "output")], strict=True)}
    expected = {(ids[v.owner], ids[op]) for op in shown for v in op.operands if v.owner in ids}
    got = {(s, n.id) for n in nodes for s, _ in n.inputs if s.startswith("n") and n.id.startswith("n")}
    assert got == expected
    assert to_dot(nodes).count(" -> ") == sum(len(n.inputs) for n in nodes)
    assert "<svg" in model._repr_svg_() and "traced" in model._repr_html_()


def test_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def factory():\n    raise RuntimeError('boom')\n")
    r = run("convert", f"{bad}:factory", "-o", str(tmp_path / "m.jlite"))
    assert r.returncode == 1 and "factory() in" in r.stderr and "boom" in r.stderr and "Traceback" not in r.stderr
    r = run("graph", str(tmp_path / "none.jlite"), "-o", "x.svg")
    assert r.returncode == 1 and "no such file" in r.stderr
    for sub in ("convert", "opt", "run", "summary", "graph", "bench", "report", "compare", "ir"):
        r = run(sub, "--help")
        assert r.returncode == 0 and "example" in r.stdout, sub


def test_model_explorer_adapter_and_node_data(tmp_path):
    import json

    from jaxlite.compiler.graph import model_graph
    from jaxlite.model_explorer.graph_json import me_graph_dict, node_data

    cnn, f, _ = _models(tmp_path)
    x = np.random.default_rng(0).standard_normal((128, 8, 8, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    q = tmp_path / "q.jlite"
    assert run("convert", cnn, "-o", str(q), "--quantize", "dynamic").returncode == 0
    nd = tmp_path / "nd.json"
    r = run("report", str(f), str(q), "--data", str(tmp_path / "x.npy"), "--node-data", str(nd))
    assert r.returncode == 0, r.stderr
    data = json.loads(nd.read_text())["main"]
    assert len(data["results"]) == 3 and all(isinstance(v["value"], float) for v in data["results"].values())
    nodes = model_graph(jaxlite.load(q).module)
    assert set(data["results"]) <= {n.id for n in nodes}
    graph = me_graph_dict(nodes)
    assert {n["id"] for n in graph["nodes"]} == {n.id for n in nodes}
    assert json.loads(node_data({}, nodes))["main"]["results"] == {}
    me = pytest.importorskip("model_explorer")
    from jaxlite.model_explorer.main import JaxliteAdapter

    graphs = JaxliteAdapter().convert(str(q), {})["graphs"]
    assert isinstance(graphs[0], me.graph_builder.Graph)
    assert [n.id for n in graphs[0].nodes] == [n.id for n in nodes]
    assert any(kv.key == "operand 1" and "params.Conv_0" in kv.value for kv in graphs[0].nodes[1].attrs)


def _readme_block(heading: str) -> list[str]:
    """The command lines of the first bash block after ``heading`` in README.md."""
    text = (ROOT / "README.md").read_text().split(heading, 1)[1]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_tour_runs_as_written(tmp_path):
    """Every command of README's tour, verbatim, in a fresh directory (the data line
    included), then the command-line section's MLP lines on the data it wrote."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    tour = [c for c in _readme_block("## A short tour") if not c.startswith("model-explorer")]
    cli = [c for c in _readme_block("## Command line") if "digits_mlp" in c or c.startswith("jaxlite run mlp")]
    assert tour[0].startswith("python -c") and len(cli) == 2
    for command in tour + cli:
        if command.startswith("python "):
            argv = [sys.executable, *shlex.split(command)[1:]]
        else:
            argv = [sys.executable, "-m", "jaxlite", *shlex.split(command)[1:]]
        r = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 0, f"{command}\n{r.stdout}\n{r.stderr}"
    for made in ("x_train.npy", "x_test.npy", "x.npy", "cnn.jlite", "cnn_int8.jlite", "cnn_int8.tflite", "cnn.html", "err.json",
                 "mlp.jlite", "y.npy", "cnn_any.jlite", "y_any.npy"):
        assert (tmp_path / made).is_file(), made
    assert np.load(tmp_path / "y.npy").shape == (64, 10)
    assert np.load(tmp_path / "y_any.npy").shape == (359, 10)  # --dynamic-batch: every test image


def test_dynamic_batch_on_the_cli(tmp_path):
    """convert --dynamic-batch; run, compare, report and int8 calibration take any number of
    samples (no padding); bench sizes random inputs with --dim, which names unknown symbols."""
    factory = tmp_path / "tiny.py"
    factory.write_text(
        "import jax.numpy as jnp, numpy as np\n"
        "W = jnp.asarray(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3))\n"
        "def factory():\n"
        "    return (lambda x: jnp.tanh(x @ W)), (np.ones((2, 4), np.float32),)\n")
    x = np.random.default_rng(0).standard_normal((1030, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    m, q = str(tmp_path / "m.jlite"), str(tmp_path / "q.jlite")
    r = run("convert", f"{factory}:factory", "-o", m, "--dynamic-batch")
    assert r.returncode == 0 and "float32[b,4]" in r.stdout, r.stderr
    r = run("convert", f"{factory}:factory", "-o", q, "--dynamic-batch", "--quantize", "int8",
            "--calibration", str(tmp_path / "x.npy"))
    assert r.returncode == 0, r.stderr
    r = run("run", m, "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"))
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.tanh(x @ np.linspace(-1, 1, 12).reshape(4, 3)),
                               rtol=1e-5, atol=1e-5)
    r = run("compare", m, q, "--input", str(tmp_path / "x.npy"))  # batches of 1024 and 6
    assert r.returncode == 0 and "padded" not in r.stderr, r.stderr
    r = run("report", m, q, "--data", str(tmp_path / "x.npy"))
    assert r.returncode == 0, r.stderr
    r = run("bench", m, "--dim", "b=16", "--reps", "3")
    assert r.returncode == 0 and "median" in r.stdout, r.stderr
    r = run("bench", m, "--dim", "t=16", "--reps", "3")
    assert r.returncode == 1 and "--dim t: the model has no such dimension (its symbols: b)" in r.stderr
