"""`toolchain quantize` as a user runs it: outputs, report, and one-line errors for bad input (nothing written)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from test_cli import assert_user_error
from toolchain import api
from toolchain.cli import cli
from toolchain.zoo import default_eval_data


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
    assert "fusion coverage 1.00" in result.output and "float ops left: none" in result.output
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


@pytest.mark.parametrize("flag, value", [("--w-bits", 3), ("--a-bits", 16), ("--w-bits", 1)])
def test_bits_out_of_range(digits, calib_npz, tmp_path, flag, value):
    """Bits outside {2, 4, 8}: one line naming the flag and the choices."""
    assert_user_error(run("quantize", digits, "--calib", calib_npz, "-o", tmp_path / "out.onnx", flag, value), flag, "2, 4, 8")


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
def conv_softmax(tmp_path):
    """Conv -> Softmax: Softmax has no quantization rule."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Softmax", ["c"], ["y"], name="softmax", axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 8, 8])], [w])
    path = tmp_path / "softmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_op_without_rule_is_left_in_float_with_a_warning(conv_softmax, calib_npz, tmp_path):
    """Softmax: warned about on stderr, listed in the report, left in float; the Conv is still quantized."""
    out = tmp_path / "q.onnx"
    result = run("quantize", conv_softmax, "--calib", calib_npz, "-o", out)
    assert result.exit_code == 0, result.output
    assert "Softmax" in result.stderr and "'softmax'" in result.stderr
    report = json.loads((tmp_path / "q.report.json").read_text())
    assert report["unquantized"] == [{"node": "softmax", "op_type": "Softmax"}]
    assert report["summary"]["quantized_layers"] == 1


def test_require_all_quantized_fails_on_op_without_rule(conv_softmax, calib_npz, tmp_path):
    """--require-all-quantized turns the warning into an error naming the node; nothing is written."""
    out = tmp_path / "out.onnx"
    assert_user_error(run("quantize", conv_softmax, "--calib", calib_npz, "-o", out, "--require-all-quantized"), "Softmax 'softmax'")
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
    """A NaN loss mid-reconstruction: one-line error naming the unit, exit 1, no model or report."""
    from dataclasses import replace

    from toolchain.recon import ReconConfig

    original = ReconConfig.preset.__func__

    def diverging(cls, *args, **kwargs):
        return replace(original(cls, *args, **kwargs), round_lr=float("nan"))

    monkeypatch.setattr(ReconConfig, "preset", classmethod(diverging))
    result = run("quantize", digits, "--calib", calib_npz, "--reconstruct", "brecq", "--preset", "fast", "-o", tmp_path / "out.onnx")
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = [line for line in result.output.splitlines() if line.strip()][-1]  # after the progress bars
    assert last.startswith("Error: unit 0 (") and "loss became nan" in last and "nothing was written" in last
    assert _nothing_written(tmp_path)
