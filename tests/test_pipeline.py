"""Pass pipelines from strings: parsing, errors, and passes that need the model's resources."""

import numpy as np
import pytest
from xdsl.context import Context
from xdsl.passes import ModulePass

import jaxlite
from jaxlite import cli
from jaxlite.examples import digits_mlp
from jaxlite.passes import pipeline
from jaxlite.passes.canonicalize import CanonicalizePass
from jaxlite.passes.quantize import QuantizePass


def test_whitespace_around_pass_names_is_tolerated():
    assert [p.name for p in pipeline.parse(" cse , dce ")] == ["cse", "dce"]
    assert [p.name for p in pipeline.parse("cse,\n  dce")] == ["cse", "dce"]
    (q,) = pipeline.parse('quantize{mode=int8 skip="params.Dense_2*","*head*" per-channel=false}')
    assert q == QuantizePass(mode="int8", per_channel=False, skip=("params.Dense_2*", "*head*"))


@pytest.mark.parametrize("spec, message", [
    ("cse,,dce", "empty pass name"),
    ("canonicalize{fast-math=true", "cannot parse pass 'canonicalize{fast-math=true': column"),
    ("quantize{mode=int8 skip=a*}", "option values other than names and numbers go in quotes"),
    ("bogus", "unknown pass 'bogus'; available passes:"),
    ("quantize{colour=red}", "bad options for pass 'quantize'"),
])
def test_malformed_pipelines_are_one_line_conversion_errors(spec, message):
    with pytest.raises(jaxlite.ConversionError, match=message) as info:
        pipeline.parse(spec)
    assert "\n" not in str(info.value)


def _module_and_weights():
    fn, args = digits_mlp.factory(8)
    model = jaxlite.convert(fn, *args, passes="")
    return model, args


def test_a_failing_pass_is_a_conversion_error_naming_it():
    class Exploding(ModulePass):
        name = "explode"

        def apply(self, ctx: Context, op) -> None:
            raise KeyError("a pass bug")

    model, _ = _module_and_weights()
    with pytest.raises(jaxlite.ConversionError, match="pass explode failed: KeyError: 'a pass bug'"):
        pipeline.run(model.module, model.weights, [Exploding()])


def test_passes_over_weights_get_them_from_the_pipeline_only():
    model, args = _module_and_weights()
    with pytest.raises(jaxlite.ConversionError, match="reads the model's weights"):
        CanonicalizePass().apply(Context(), model.module)
    pipeline.run(model.module, model.weights, pipeline.parse("canonicalize, cse, dce, fuse"))
    assert model.op_counts()["jfuse.dot"] == 3


def test_int8_from_a_pipeline_string_needs_calibration_and_works_with_it():
    model, args = _module_and_weights()
    with pytest.raises(jaxlite.ConversionError, match="pass quantize: int8 mode needs calibration data"):
        pipeline.run(model.module, model.pass_resources(), pipeline.parse("quantize{mode=int8}"))
    model, args = _module_and_weights()
    float_out = np.asarray(model.compile()(*args))
    pipeline.run(model.module, model.pass_resources([args]), pipeline.parse("fuse, quantize{mode=int8}, dce"))
    assert model.op_counts()["jquant.qdot"] == 3
    np.testing.assert_allclose(np.asarray(model.compile()(*args)), float_out, atol=0.05 * np.abs(float_out).max())


def test_opt_runs_quantize_from_the_command_line(tmp_path, capsys):
    fn, args = digits_mlp.factory(8)
    path, out = tmp_path / "mlp.jlite", tmp_path / "mlp_int8.jlite"
    jaxlite.convert(fn, *args).save(path)
    np.save(tmp_path / "x.npy", np.asarray(args[0]))
    assert cli.main(["opt", str(path), "-p", "cse, dce", "-o", str(tmp_path / "same.jlite")]) == 0
    capsys.readouterr()
    assert cli.main(["opt", str(path), "-p", "quantize{mode=int8}", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs calibration data" in err and "Traceback" not in err
    assert cli.main(["opt", str(path), "-p", "quantize{mode=int8}", "--calibration", str(tmp_path / "x.npy"),
                     "-o", str(out)]) == 0
    assert jaxlite.load(out).op_counts()["jquant.qdot"] == 3
    capsys.readouterr()
    assert cli.main(["opt", str(path), "-p", "cse,,dce"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
