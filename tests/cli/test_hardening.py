"""Inputs that used to end in a traceback, and the last line of defence for the ones nobody thought of.

Each test names an input a user met (issue #10): external data outside the model's folder, a graph
output without a shape, int64 shape arithmetic (ShuffleNet's channel shuffle), and a bug inside a
command, which must still end in one line that names the log file holding the traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import helper

from toolchain import api
from toolchain.cli.commands import cli
from toolchain.cli.errors import INTERNAL_ERROR
from toolchain.onnxio.files import load_model, save_model


def run(*args, env: dict | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def one_error_line(result, code: int = 2) -> str:
    """Exit `code` (2: bad input, 1: internal error), no exception escaping, exactly one 'Error: ' line on stderr;
    returns it."""
    assert result.exit_code == code, result.output
    assert result.exc_info is None or result.exc_info[0] is SystemExit
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("digits") / "d.onnx"
    api.export_model("digits_resnet", path)
    return path


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "c.npz"
    np.savez(path, inputs=np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32))
    return path


# ------------------------------------------------------------------------------------------- the last line of defence


def test_a_bug_inside_a_command_is_one_line_naming_the_log_with_the_traceback(digits, tmp_path, monkeypatch):
    """An unexpected exception: exit 1, one line with the error and the log file, the traceback in that file only."""
    monkeypatch.setattr(api, "inspect_model", lambda path: 1 / 0)
    result = run("inspect", digits, env={"TOOLCHAIN_LOG_DIR": str(tmp_path)})
    line = one_error_line(result, code=1)
    assert INTERNAL_ERROR in line and "ZeroDivisionError" in line and "--debug" in line
    logs = list(tmp_path.glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in line
    assert "Traceback" in logs[0].read_text() and "ZeroDivisionError" in logs[0].read_text()


def test_debug_prints_the_traceback_too(digits, tmp_path, monkeypatch):
    """toolchain --debug: the same one-line summary, with the traceback on stderr before it."""
    monkeypatch.setattr(api, "inspect_model", lambda path: 1 / 0)
    result = CliRunner().invoke(cli, ["--debug", "inspect", str(digits)], env={"TOOLCHAIN_LOG_DIR": str(tmp_path)})
    assert result.exit_code == 1 and "Traceback" in result.stderr and INTERNAL_ERROR in result.stderr.splitlines()[-1]


def test_an_os_error_is_the_systems_message_with_the_file(digits, tmp_path, monkeypatch):
    """A full disk or a permission problem: one line with the system's reason and the path, exit 2, no traceback."""
    def full_disk(path):
        raise OSError(28, "No space left on device", str(tmp_path / "x.onnx"))

    monkeypatch.setattr(api, "inspect_model", full_disk)
    line = one_error_line(run("inspect", digits))
    assert "No space left on device" in line and "x.onnx" in line and INTERNAL_ERROR not in line


def test_exit_codes_are_documented_in_the_help():
    """toolchain --help lists the exit codes."""
    result = run("--help")
    assert "Exit codes" in result.output and "130" in result.output


# ------------------------------------------------------------------------------------------- external data


def _with_external_data(digits: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "d.onnx"
    onnx.save_model(onnx.load(str(digits)), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="d.weights", size_threshold=256)
    return path


def test_a_model_with_its_weights_in_a_side_file_quantizes_and_evaluates(digits, calib, tmp_path):
    """External data beside the model (onnx's own writer): quantize and evaluate work, the result equals the
    single-file model's."""
    external = _with_external_data(digits, tmp_path / "ext")
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(external), load_external_data=False).graph.initializer)
    for source, out in ((external, tmp_path / "a.onnx"), (digits, tmp_path / "b.onnx")):
        result = run("quantize", source, "--calib", calib, "-o", out)
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a.onnx").read_bytes() != b"" and _graph(tmp_path / "a.onnx") == _graph(tmp_path / "b.onnx")
    data = Path(__file__).resolve().parents[2] / "models" / "artifacts" / "digits_test.npz"
    assert run("evaluate", external, "--data", data).exit_code == 0


def _graph(path: Path) -> bytes:
    return onnx.load(str(path)).graph.SerializeToString()


@pytest.mark.parametrize("location", ["../../../etc/hostname", "/etc/hostname", "sub/../../d.weights", "link.bin"])
def test_external_data_outside_the_models_folder_is_refused_naming_tensor_and_path(digits, calib, tmp_path, location):
    """A location that is absolute, climbs out with '..', or is a link leading out: refused in one line naming the
    tensor and the location, and nothing is written."""
    external = _with_external_data(digits, tmp_path / "m")
    (tmp_path / "m" / "link.bin").symlink_to("/etc/hostname")
    model = onnx.load(str(external), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(external))
    first = next(t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    line = one_error_line(run("quantize", external, "--calib", calib, "-o", tmp_path / "q.onnx"))
    assert f"tensor {first!r}" in line and location in line and "outside the model's folder" in line
    assert not (tmp_path / "q.onnx").exists()


def test_a_large_model_is_written_with_its_weights_beside_it_and_read_back(digits, tmp_path):
    """save_model above the threshold: NAME.onnx + NAME.onnx.<hash>.data, read back identical; writing it again small
    removes the data file; the in-memory model keeps its weights."""
    model = load_model(digits)
    before = model.SerializeToString()
    path = tmp_path / "big.onnx"
    save_model(model, path, external_data_above=1)
    assert model.SerializeToString() == before, "the caller's model is not changed"
    data_files = list(tmp_path.glob("big.onnx.*.data"))
    assert len(data_files) == 1 and path.stat().st_size < len(before) / 4
    assert load_model(path).SerializeToString() == before
    save_model(model, path)
    assert not list(tmp_path.glob("big.onnx.*.data")) and load_model(path).SerializeToString() == before


# ------------------------------------------------------------------------------------------- graphs


def test_a_graph_output_without_shape_quantizes_into_a_checker_valid_model(digits, calib, tmp_path):
    """Output declared with make_tensor_value_info(name, FLOAT, None): the QDQ model passes onnx.checker and its output
    has the inferred shape [batch, 10]."""
    model = onnx.load(str(digits))
    name = model.graph.output[0].name
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    source = tmp_path / "noshape.onnx"
    onnx.save(model, str(source))
    result = run("quantize", source, "--calib", calib, "-o", tmp_path / "q.onnx")
    assert result.exit_code == 0, result.output
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    onnx.checker.check_model(quantized)
    dims = quantized.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 10]


class ChannelShuffle(torch.nn.Module):
    """Conv-BN-ReLU, ShuffleNetV2's channel shuffle (view/transpose/reshape from x.shape), pooling, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        batch, channels, height, width = x.shape
        x = x.view(batch, 2, channels // 2, height, width).transpose(1, 2).reshape(batch, channels, height, width)
        return self.fc(x.mean((2, 3)))


def test_int64_shape_arithmetic_is_left_alone_and_the_model_quantizes(calib, tmp_path):
    """torch.onnx's Shape/Gather/Cast/Div/Concat of a channel shuffle, with height and width dynamic too (so the
    shapes cannot be folded): those int64 nodes are not quantized (listed as integer nodes), every Conv/Gemm is,
    and onnxruntime runs the result close to FP32 (SQNR >= 20 dB). (With only the batch dynamic, clean-up folds
    them away: tests/test_families.py.)"""
    torch.manual_seed(0)
    path = tmp_path / "shuffle.onnx"
    torch.onnx.export(ChannelShuffle().eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b"}})
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Shape", "Gather", "Div", "Cast"} <= ops
    result = run("quantize", path, "--calib", calib, "-o", tmp_path / "q.onnx")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "q.report.json").read_text())
    integer = {entry["op_type"] for entry in report["integer_nodes"]}
    assert {"Shape", "Gather", "Concat"} <= integer  # the static channels' Div is folded; the symbolic h, w are not
    assert report["summary"]["quantized_layers"] == 2 and report["summary"]["output_sqnr_db"] >= 20


def test_every_command_ends_through_the_error_handler():
    """Each `toolchain` command runs inside cli_errors.handle_errors (so no command can end in a traceback)."""
    from toolchain.cli.errors import handle_errors

    wrapper_code = handle_errors(lambda: None).__code__
    unwrapped = [name for name, command in cli.commands.items() if command.callback.__code__ is not wrapper_code]
    assert not unwrapped, f"commands without handle_errors: {unwrapped}"


def test_models_too_large_for_bytes_run_check_and_hash_through_a_temporary_folder(digits, monkeypatch):
    """The >1 GiB paths, forced on a small model: onnxruntime gives the same logits from the temporary folder, the
    checker passes, the hash identifies the model (changes with one weight), and the model is left unchanged."""
    import onnxruntime as ort

    import toolchain.onnxio.external_data as external_data
    import toolchain.onnxio.files as modelio
    import toolchain.onnxio.sessions as ortsession

    model = load_model(digits)
    before = model.SerializeToString()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    monkeypatch.setattr(ortsession, "fits_one_protobuf", lambda *args: False)
    monkeypatch.setattr(modelio, "fits_one_protobuf", lambda *args: False)
    monkeypatch.setattr(external_data, "fits_one_protobuf", lambda *args: False)  # check_model's own test
    got = ortsession.inference_session(model).run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, expected)
    modelio.check_model(model)
    large_hash = modelio.model_sha256(model)
    assert large_hash == modelio.model_sha256(model) and model.SerializeToString() == before
    weight = next(t for t in model.graph.initializer if len(t.raw_data) > 64)
    weight.raw_data = bytes([weight.raw_data[0] ^ 1]) + weight.raw_data[1:]
    assert modelio.model_sha256(model) != large_hash
