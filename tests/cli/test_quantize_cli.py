"""`toolchain quantize` as a user runs it: outputs, report, and one-line errors for bad input (nothing written)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from toolchain import api
from toolchain.cli.commands import cli
from toolchain.export.zoo import default_eval_data

from cli_helpers import assert_user_error


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return api.export_model("digits_resnet", tmp_path_factory.mktemp("q") / "digits.onnx").path


@pytest.fixture(scope="module")
def calib_npz(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    x = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    np.savez(path, inputs=x)
    return path


def _nothing_written(directory, name="out"):
    return not list(directory.glob(f"{name}*"))


def test_quantize_writes_model_and_report_next_to_it(digits, calib_npz, tmp_path):
    """-o DIR/NAME.onnx writes NAME.onnx and NAME.report.json; the summary line names coverage and float ops."""
    out = tmp_path / "digits_w8a8.onnx"
    result = run("quantize", digits, "--calib", calib_npz, "-o", out)
    assert result.exit_code == 0, result.output
    assert "integer coverage 1.00 of ops, 1.000 of MACs" in result.output and "float ops left: none" in result.output
    report = json.loads((tmp_path / "digits_w8a8.report.json").read_text())
    assert report["fusion"]["coverage"] == 1.0 and report["config"]["w_bits"] == 8 and report["calibration"]["n"] == 32


def test_quantize_from_an_image_dataset_samples_reproducibly(digits, tmp_path):
    """--calib with an image .npz: --calib-limit images drawn with --seed; same seed, same model bytes."""
    outs = []
    for name in ("a.onnx", "b.onnx"):
        result = run("quantize", digits, "--calib", default_eval_data(), "--calib-limit", 40, "--seed", 3, "-o", tmp_path / name, "--json")
        assert result.exit_code == 0, result.output
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
    assert json.loads((tmp_path / "a.report.json").read_text())["calibration"]["n"] == 40


@pytest.mark.parametrize("inputs, needle", [
    (np.zeros((4, 1, 16, 16), np.float32), "shape"),
    (np.zeros((4, 1, 8, 8), np.float64), "float64"),
    (np.full((4, 1, 8, 8), np.nan, np.float32), "NaN"),
    (np.zeros((0, 1, 8, 8), np.float32), "empty"),
])
def test_bad_calibration_data(digits, tmp_path, inputs, needle):
    """Wrong shape, wrong dtype, NaN/Inf and an empty set: one line naming the problem, no output written."""
    calib = tmp_path / "bad.npz"
    np.savez(calib, inputs=inputs)
    assert_user_error(run("quantize", digits, "--calib", calib, "-o", tmp_path / "out.onnx"), needle)
    assert _nothing_written(tmp_path)


def test_calibration_npz_without_inputs_or_images(digits, tmp_path):
    """An .npz with neither 'inputs' nor 'images': says what the format is."""
    calib = tmp_path / "odd.npz"
    np.savez(calib, something=np.zeros(3))
    assert_user_error(run("quantize", digits, "--calib", calib, "-o", tmp_path / "out.onnx"), "odd.npz")
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize("flag, value, choices", [("--w-bits", 5, "2, 3, 4, 8"), ("--a-bits", 16, "2/4/8"), ("--w-bits", 1, "2, 3, 4, 8"),
                                                   ("--a-bits", 5, "2, 4, 8, 16")])
def test_bits_out_of_range(digits, calib_npz, tmp_path, flag, value, choices):
    """Bits no target supports, or (16-bit activations) the default target does not: one line naming the flag and the choices."""
    assert_user_error(run("quantize", digits, "--calib", calib_npz, "-o", tmp_path / "out.onnx", flag, value), flag, choices)


def test_existing_output_is_not_replaced(digits, calib_npz, tmp_path):
    """An existing output file: refused without --overwrite, left untouched."""
    out = tmp_path / "out.onnx"
    out.write_bytes(b"keep me")
    assert_user_error(run("quantize", digits, "--calib", calib_npz, "-o", out), "--overwrite")
    assert out.read_bytes() == b"keep me"


def test_already_quantized_model(digits, calib_npz, tmp_path):
    """Quantizing a QDQ model again: says it is already quantized."""
    first = tmp_path / "q.onnx"
    assert run("quantize", digits, "--calib", calib_npz, "-o", first).exit_code == 0
    assert_user_error(run("quantize", first, "--calib", calib_npz, "-o", tmp_path / "out.onnx"), "already quantized")
    assert _nothing_written(tmp_path)


@pytest.fixture
def conv_sin(tmp_path):
    """Conv -> Sin: Sin has no quantization rule."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sin", ["c"], ["y"], name="sin")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 8, 8])], [w])
    path = tmp_path / "sin.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_op_without_rule_is_left_in_float_with_a_warning(conv_sin, calib_npz, tmp_path):
    """Sin: warned about on stderr once, listed in the report and in the float ops, left in float; the Conv is
    still quantized, and the summary does not claim full coverage."""
    out = tmp_path / "q.onnx"
    result = run("quantize", conv_sin, "--calib", calib_npz, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("no quantization rule for Sin node 'sin'") == 1
    report = json.loads((tmp_path / "q.report.json").read_text())
    assert report["unquantized"] == [{"node": "sin", "op_type": "Sin"}]
    assert report["summary"]["quantized_layers"] == 1
    assert {"op_type": "Sin", "name": "sin"} in report["fusion"]["float_ops"] and not report["summary"]["fully_integer"]
    assert "integer coverage 1.00" not in result.output and "Sin x1" in result.output


def test_require_full_integer_fails_while_an_op_runs_in_float(conv_sin, digits, calib_npz, tmp_path):
    """--require-full-integer: exit 2 naming the float op and writing nothing; a model onnxruntime runs
    entirely on integers (the digits ResNet) passes with the same flag."""
    out = tmp_path / "out.onnx"
    failed = run("quantize", conv_sin, "--calib", calib_npz, "-o", out, "--require-full-integer")
    lines = [line for line in failed.output.splitlines() if line.startswith("Error: ")]  # after calibration's progress bars
    assert failed.exit_code == 2 and len(lines) == 1 and "Sin 'sin'" in lines[0] and "Traceback" not in failed.output
    assert _nothing_written(tmp_path)
    result = run("quantize", digits, "--calib", calib_npz, "-o", tmp_path / "digits.onnx", "--require-full-integer")
    assert result.exit_code == 0, result.output


def test_require_all_quantized_fails_on_op_without_rule(conv_sin, calib_npz, tmp_path):
    """--require-all-quantized turns the warning into an error naming the node; nothing is written."""
    out = tmp_path / "out.onnx"
    assert_user_error(run("quantize", conv_sin, "--calib", calib_npz, "-o", out, "--require-all-quantized"), "Sin 'sin'")
    assert _nothing_written(tmp_path)


def test_calibration_npz_is_used_whole_by_default(digits, tmp_path):
    """A calibration .npz larger than 512 inputs is used whole unless --calib-limit says otherwise."""
    calib = tmp_path / "big.npz"
    np.savez(calib, inputs=np.random.default_rng(0).standard_normal((600, 1, 8, 8)).astype(np.float32))
    assert run("quantize", digits, "--calib", calib, "-o", tmp_path / "a.onnx").exit_code == 0
    assert json.loads((tmp_path / "a.report.json").read_text())["calibration"]["n"] == 600
    assert run("quantize", digits, "--calib", calib, "-o", tmp_path / "b.onnx", "--calib-limit", 100).exit_code == 0
    assert json.loads((tmp_path / "b.report.json").read_text())["calibration"]["n"] == 100


def test_quantize_with_pdquant_reconstruction_writes_units_to_the_report(digits, calib_npz, tmp_path):
    """--reconstruct pdquant --preset fast: the summary names it, the report lists every unit with its losses."""
    out = tmp_path / "digits_pd.onnx"
    result = run("quantize", digits, "--calib", calib_npz, "--w-bits", 4, "--a-bits", 4, "--reconstruct", "pdquant",
                 "--preset", "fast", "-o", out)
    assert result.exit_code == 0, result.output
    assert "pdquant fast" in result.output
    report = json.loads((tmp_path / "digits_pd.report.json").read_text())
    units = report["reconstruction"]["units"]
    assert report["reconstruction"]["config"]["method"] == "pdquant" and len(units) >= 3
    assert all("rec" in u["loss_before"] and "rec" in u["loss_after"] for u in units)


def test_quantize_rejects_a_calibration_set_smaller_than_the_reconstruction_batch(digits, calib_npz, tmp_path):
    result = run("quantize", digits, "--calib", calib_npz, "--reconstruct", "brecq", "--recon-batch-size", 64, "-o", tmp_path / "out.onnx")
    assert_user_error(result, "fewer than the reconstruction batch size 64")
    assert _nothing_written(tmp_path)


def test_quantize_divergence_names_the_unit_and_writes_nothing(digits, calib_npz, tmp_path, monkeypatch):
    """A NaN loss mid-reconstruction: one-line error naming the unit, exit 2, no model or report."""
    from dataclasses import replace

    from toolchain.quantize.reconstruct import ReconConfig

    original = ReconConfig.preset.__func__

    def diverging(cls, *args, **kwargs):
        return replace(original(cls, *args, **kwargs), round_lr=float("nan"))

    monkeypatch.setattr(ReconConfig, "preset", classmethod(diverging))
    result = run("quantize", digits, "--calib", calib_npz, "--reconstruct", "brecq", "--preset", "fast", "-o", tmp_path / "out.onnx")
    assert result.exit_code == 2 and "Traceback" not in result.output
    last = [line for line in result.output.splitlines() if line.strip()][-1]  # after the progress bars
    assert last.startswith("Error: unit 0 (") and "loss became nan" in last and "no model was written" in last
    assert _nothing_written(tmp_path)  # no finished unit: no checkpoint either


def _stop_at_unit(monkeypatch, index: int, error: BaseException) -> None:
    """Make reconstruction stop when it reaches unit `index` (the units before it finish normally)."""
    from toolchain.quantize.reconstruct import trainer

    original = trainer.UnitTrainer.unit

    def unit(self, unit, bar_position):
        if unit.index == index:
            raise error
        return original(self, unit, bar_position)

    monkeypatch.setattr(trainer.UnitTrainer, "unit", unit)


def _initializers(path) -> dict:
    return {i.name: numpy_helper.to_array(i).tobytes() for i in onnx.load(path).graph.initializer}


@pytest.mark.parametrize("stop", ["divergence", "ctrl-c"])
def test_quantize_resume_after_a_stop_gives_the_uninterrupted_model(digits, calib_npz, tmp_path, monkeypatch, stop):
    """Rule: the finished units survive a divergence or Ctrl-C in OUTPUT.ckpt, and --resume then writes
    exactly (bit for bit) the model an uninterrupted run writes, and removes the checkpoint."""
    from toolchain.quantize.reconstruct.engine import ReconstructionError

    args = ["quantize", digits, "--calib", calib_npz, "--w-bits", 4, "--a-bits", 4, "--reconstruct", "pdquant",
            "--preset", "fast"]
    assert run(*args, "-o", tmp_path / "whole.onnx").exit_code == 0
    with monkeypatch.context() as patch:
        error = ReconstructionError("unit 2 (block): the loss became nan at iteration 3") if stop == "divergence" else KeyboardInterrupt()
        _stop_at_unit(patch, 2, error)
        stopped = run(*args, "-o", tmp_path / "out.onnx")
    checkpoint = tmp_path / "out.onnx.ckpt"
    assert not (tmp_path / "out.onnx").exists() and checkpoint.is_file()
    if stop == "divergence":
        assert stopped.exit_code == 2 and "Traceback" not in stopped.output
        assert "The 2 finished unit(s) are kept in" in stopped.output and "--resume" in stopped.output
    else:
        assert stopped.exit_code == 130 and "--resume continues" in stopped.output
    resumed = run(*args, "-o", tmp_path / "out.onnx", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert _initializers(tmp_path / "out.onnx") == _initializers(tmp_path / "whole.onnx")
    assert not checkpoint.exists()
    units = json.loads((tmp_path / "out.report.json").read_text())["reconstruction"]["units"]
    assert [u["unit"] for u in units] == list(range(len(units)))


def test_quantize_resume_refuses_a_checkpoint_of_another_run(digits, calib_npz, tmp_path, monkeypatch):
    """Rule: a checkpoint is only applied to the run that wrote it (here the bits differ): one-line error."""
    from toolchain.quantize.reconstruct.engine import ReconstructionError

    args = ["quantize", digits, "--calib", calib_npz, "--reconstruct", "brecq", "--preset", "fast", "-o", tmp_path / "out.onnx"]
    with monkeypatch.context() as patch:
        _stop_at_unit(patch, 1, ReconstructionError("unit 1 (block): the loss became nan at iteration 1"))
        assert run(*args, "--w-bits", 4).exit_code == 2
    result = run(*args, "--w-bits", 8, "--resume")
    assert_user_error(result, "was written by a run with different", "quantizer")
    assert not (tmp_path / "out.onnx").exists()


def test_quantize_resume_needs_reconstruction_and_a_checkpoint(digits, calib_npz, tmp_path):
    result = run("quantize", digits, "--calib", calib_npz, "--resume", "-o", tmp_path / "out.onnx")
    assert_user_error(result, "--resume continues an interrupted reconstruction")
    result = run("quantize", digits, "--calib", calib_npz, "--reconstruct", "brecq", "--preset", "fast", "--resume",
                 "-o", tmp_path / "out.onnx")
    assert_user_error(result, "does not exist; run without --resume")
    assert _nothing_written(tmp_path)


def test_quantize_reconstruction_flags_reach_the_recorded_config(digits, calib_npz, tmp_path):
    """Rule: every reconstruction option of the CLI is applied, and recorded in the report's config."""
    out = tmp_path / "flags.onnx"
    result = run("quantize", digits, "--calib", calib_npz, "--w-bits", 4, "--a-bits", 4, "--reconstruct", "pdquant",
                 "--preset", "fast", "--recon-iterations", 3, "--recon-batch-size", 4, "--pd-weight", 2.5,
                 "--no-qdrop", "--no-dc", "--no-learn-scales", "-o", out)
    assert result.exit_code == 0, result.output
    recon = json.loads((tmp_path / "flags.report.json").read_text())["reconstruction"]
    config = recon["config"]
    assert (config["iterations"], config["batch_size"], config["pd_weight"]) == (3, 4, 2.5)
    assert not config["qdrop"] and not config["distribution_correction"] and not config["learn_scales"]
    assert config["prediction_difference"] and all(not u["learned_scales"] for u in recon["units"])
    result = run("quantize", digits, "--calib", calib_npz, "--reconstruct", "pdquant", "--pd-weight", 0, "-o", tmp_path / "x.onnx")
    assert result.exit_code == 2 and "--pd-weight" in result.output  # click's usage error: must be > 0


@pytest.mark.parametrize("w_bits, expected", [(2, 1.0), (4, 10.0)])
def test_quantize_records_the_pd_weight_chosen_by_the_weight_bits(digits, calib_npz, tmp_path, w_bits, expected):
    """Rule: without --pd-weight, the PD weight that ran follows the model's weight bits (1 below 4 bits,
    10 from 4 bits) and the report records that value, not None."""
    out = tmp_path / "pd.onnx"
    result = run("quantize", digits, "--calib", calib_npz, "--w-bits", w_bits, "--a-bits", 4, "--reconstruct", "pdquant",
                 "--preset", "fast", "--recon-iterations", 2, "--recon-batch-size", 4, "-o", out)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "pd.report.json").read_text())["reconstruction"]["config"]["pd_weight"] == expected


@pytest.mark.parametrize("options, needles", [
    (["--device", "cuda", "--reconstruct", "brecq", "--preset", "fast"], ["--device cuda", "--device cpu or auto"]),
    (["--device", "tpu"], ["unknown device 'tpu'", "auto, cpu, cuda or cuda:N"]),
    (["--providers", "NoSuchExecutionProvider"], ["NoSuchExecutionProvider", "--providers cpu"]),
])
def test_bad_execution_options_are_one_line_errors_and_write_nothing(digits, calib_npz, tmp_path, options, needles):
    """Rule: a device torch cannot use, an unknown device or a missing onnxruntime provider exits 2 with the fix."""
    import torch

    if "cuda" in options and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run("quantize", digits, "--calib", calib_npz, "-o", tmp_path / "out.onnx", *options)
    assert_user_error(result, *needles)
    assert _nothing_written(tmp_path)


def test_a_bad_cache_budget_is_a_usage_error(digits, calib_npz, tmp_path):
    result = run("quantize", digits, "--calib", calib_npz, "-o", tmp_path / "out.onnx", "--reconstruct", "brecq",
                 "--cache-budget", "lots")
    assert result.exit_code == 2 and "e.g. 4G" in result.output
    assert _nothing_written(tmp_path)


def test_a_spilling_run_reports_its_cache(digits, calib_npz, tmp_path):
    """--cache-budget 0: every per-sample tensor spills; the report says so and nothing is left in --spill-dir."""
    spill = tmp_path / "spill"
    spill.mkdir()
    result = run("quantize", digits, "--calib", calib_npz, "-o", tmp_path / "out.onnx", "--reconstruct", "pdquant",
                 "--preset", "fast", "--cache-budget", "0", "--spill-dir", spill, "--threads", "1")
    assert result.exit_code == 0, result.output
    cache = json.loads((tmp_path / "out.report.json").read_text())["reconstruction"]["cache"]
    assert cache["budget_bytes"] == 0 and cache["peak_ram_bytes"] == 0 and cache["spilled_bytes"] > 0
    assert cache["device"] == "cpu" and cache["processes"] == 1
    assert list(spill.iterdir()) == []


def test_quiet_and_log_level_error_hide_the_warning_but_not_the_output(conv_sin, calib_npz, tmp_path):
    """Rule: --quiet prints nothing (no warning, no result line, no progress bar) and --log-level error hides the
    warning but keeps the result line; both still write the model."""
    quiet = run("quantize", conv_sin, "--calib", calib_npz, "-o", tmp_path / "a.onnx", "--quiet")
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == "" and (tmp_path / "a.onnx").is_file()
    errors_only = run("quantize", conv_sin, "--calib", calib_npz, "-o", tmp_path / "b.onnx", "--log-level", "error")
    assert errors_only.exit_code == 0 and "no quantization rule" not in errors_only.stderr
    assert errors_only.stdout.startswith("wrote ")
