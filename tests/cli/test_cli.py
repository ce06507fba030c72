"""The CLI as a user runs it: real output on good input; one line, exit 2, no traceback, no file on bad input."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import helper

from toolchain.cli.commands import cli
from toolchain.export.zoo import load_zoo_model

from cli_helpers import assert_user_error


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "digits.onnx"
    result = run("export", "digits_resnet", "-o", path)
    assert result.exit_code == 0, result.output
    return path


def test_export_prints_one_verification_line(digits_onnx, tmp_path):
    """export: one line that says where it wrote, how many BN nodes it kept and how it verified (tolerance stated)."""
    result = run("export", "digits_resnet", "-o", tmp_path / "d.onnx")
    assert result.exit_code == 0
    assert "6 BatchNormalization kept" in result.output and "onnx.checker ok" in result.output and "<= 1e-05" in result.output


def test_export_refuses_to_overwrite(digits_onnx):
    """An existing output file is not replaced without --overwrite."""
    before = digits_onnx.read_bytes()
    assert_user_error(run("export", "digits_resnet", "-o", digits_onnx), "already exists", "--overwrite")
    assert digits_onnx.read_bytes() == before


def test_inspect_json_has_required_keys(digits_onnx):
    """inspect --json: one JSON object with num_batchnorm (int) and ops (op type -> count)."""
    result = run("inspect", digits_onnx, "--json")
    data = json.loads(result.output)
    assert data["num_batchnorm"] == 6 and data["ops"]["Conv"] == 6 and len(data["quantizable"]) == 7
    assert data["preprocessing"]["input_size"] == [8, 8]


def test_inspect_text_lists_batchnorm_layers(digits_onnx):
    """inspect (text): the BN layers with channel counts, quantizable layers and stored preprocessing."""
    output = run("inspect", digits_onnx).output
    assert "BatchNormalization: 6 layers" in output and "32 channels" in output
    assert "quantizable layers: 7" in output and "preprocessing: 1-channel /255" in output


@pytest.fixture(scope="module")
def folded_onnx(tmp_path_factory):
    """A model exported elsewhere: plain eval-mode torch.onnx.export folds BN and stores no preprocessing."""
    path = tmp_path_factory.mktemp("foreign") / "folded.onnx"
    module = load_zoo_model("toolchain_models.resnet_cifar:resnet20").module
    torch.onnx.export(module, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    return path


def test_inspect_explains_missing_batchnorm(folded_onnx):
    """A graph without BN nodes: inspect says BN was folded, that zero-shot generation needs it, and how to re-export."""
    output = run("inspect", folded_onnx).output
    assert "0 layers" in output and "folded" in output and "toolchain export" in output and "zero-shot" in output


def test_stamp_writes_preprocessing_into_a_foreign_model(folded_onnx, tmp_path):
    """stamp: a foreign model gains metadata; its static 32x32 input stands in for --input-size."""
    out = tmp_path / "stamped.onnx"
    result = run("stamp", folded_onnx, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "-o", out)
    assert result.exit_code == 0, result.output
    data = json.loads(run("inspect", out, "--json").output)
    assert data["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and data["preprocessing"]["input_size"] == [32, 32]


def test_stamp_without_mean_says_what_is_missing(folded_onnx):
    """stamp with no --mean/--std on a file without metadata: one line naming the missing options."""
    assert_user_error(run("stamp", folded_onnx), "--mean", "--std")


# --- bad input ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    """A path that does not exist: named in the error."""
    assert_user_error(run("inspect", tmp_path / "nope.onnx"), "nope.onnx", "no such file")


def test_not_an_onnx_file(tmp_path):
    """A text file: 'not an ONNX file' and how to get one."""
    path = tmp_path / "notes.onnx"
    path.write_text("these are not the weights you are looking for\n" * 20)
    assert_user_error(run("inspect", path), "notes.onnx", "not an ONNX file", "toolchain export")


def test_truncated_onnx_file(digits_onnx, tmp_path):
    """An ONNX file cut in half: 'truncated' rather than a protobuf traceback."""
    path = tmp_path / "cut.onnx"
    path.write_bytes(digits_onnx.read_bytes()[: digits_onnx.stat().st_size // 2])
    assert_user_error(run("inspect", path), "cut.onnx", "truncated")


def test_non_image_input(tmp_path):
    """A model whose input is a 2-D tensor: stamp refuses, naming the input and what an image input is."""
    graph = helper.make_graph([helper.make_node("Relu", ["features"], ["y"])], "g",
                              [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["N", 128])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 128])])
    path = tmp_path / "tabular.onnx"
    onnx.save(helper.make_model(graph), path)
    before = path.read_bytes()
    assert_user_error(run("stamp", path, "--mean", "0", "--std", "1", "--input-size", "8"), "'features'", "not an image tensor", "NCHW")
    assert path.read_bytes() == before


def test_unknown_zoo_name_lists_the_names(tmp_path):
    """export of an unknown name: lists the zoo, writes nothing."""
    line = assert_user_error(run("export", "resnet21", "-o", tmp_path / "r.onnx"), "'resnet21'", "resnet20_cifar10", "mobilenetv2")
    assert "digits_resnet" in line and not list(tmp_path.iterdir())


def test_weights_that_do_not_fit_name_the_first_key(tmp_path):
    """export with weights of another architecture: names the first mismatching key and both shapes."""
    module = load_zoo_model("toolchain_models.resnet_cifar:resnet20").module
    state = module.state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(8, 16, 3, 3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "bad.th")
    out = tmp_path / "r.onnx"
    assert_user_error(run("export", "resnet20_cifar10", "--weights", tmp_path / "bad.th", "-o", out),
                      "'layer2.0.conv1.weight'", "(8, 16, 3, 3)", "(32, 16, 3, 3)")
    assert not out.exists()


def test_weights_file_missing(tmp_path):
    """export with a --weights path that does not exist: named in the error."""
    assert_user_error(run("export", "resnet20_cifar10", "--weights", tmp_path / "w.th", "-o", tmp_path / "r.onnx"), "w.th", "does not exist")


def _tar_of_classes(path, classes):
    """A .tar.gz ImageFolder with one 8x8 grey image per class folder."""
    import io
    import tarfile

    from PIL import Image

    with tarfile.open(path, "w:gz") as tar:
        for name in classes:
            buffer = io.BytesIO()
            Image.fromarray(np.full((8, 8), 128, np.uint8)).save(buffer, format="PNG")
            info = tarfile.TarInfo(f"test/{name}/0001.png")
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)
    return path


def test_evaluate_json_on_builtin_digits(digits_onnx):
    """evaluate --json: one JSON object on stdout with top1, top5, n (and agreement with --reference)."""
    from toolchain.export.zoo import default_eval_data

    result = run("evaluate", digits_onnx, "--data", default_eval_data(), "--reference", digits_onnx, "--json")
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 360 and metrics["agreement"] == 1.0 and 0.97 <= metrics["top1"] <= metrics["top5"] <= 1.0


def test_evaluate_data_path_with_no_images(digits_onnx, tmp_path):
    """A data directory holding no images: named, with the layout that is expected."""
    (tmp_path / "empty" / "3").mkdir(parents=True)
    assert_user_error(run("evaluate", digits_onnx, "--data", tmp_path / "empty"), "no images", "empty")


def test_evaluate_archive_with_foreign_classes(digits_onnx, tmp_path):
    """An archive whose class folders are not the model's classes: names the strangers and the model's classes."""
    archive = _tar_of_classes(tmp_path / "pets.tar.gz", ["cat", "dog"])
    assert_user_error(run("evaluate", digits_onnx, "--data", archive), "pets.tar.gz", "cat")


def test_evaluate_missing_data_path(digits_onnx, tmp_path):
    """--data pointing nowhere: the path is named."""
    assert_user_error(run("evaluate", digits_onnx, "--data", tmp_path / "nowhere.tar.gz"), "nowhere.tar.gz")


def test_evaluate_foreign_model_without_preprocessing(folded_onnx, tmp_path):
    """A foreign model with no metadata and no options: says which options are missing and about `toolchain stamp`."""
    archive = _tar_of_classes(tmp_path / "c.tar.gz", ["airplane"])
    assert_user_error(run("evaluate", folded_onnx, "--data", archive), "--mean", "toolchain stamp")


def test_every_command_takes_json_quiet_and_log_level():
    """Rule: every command has --json, --quiet and --log-level (and none of them prompts: no prompt options)."""
    for name, command in cli.commands.items():
        options = {p.name: p for p in command.params}
        assert {"as_json", "quiet", "log_level"} <= set(options), name
        assert not any(getattr(p, "prompt", None) for p in command.params), name


def test_zoo_export_and_stamp_print_json(tmp_path):
    """Rule: --json prints one JSON object (or list) with the command's result."""
    zoo = json.loads(run("zoo", "--json").stdout)
    assert {"name": "digits_resnet", "default": True}.items() <= next(z for z in zoo if z["name"] == "digits_resnet").items()
    exported = json.loads(run("export", "digits_resnet", "-o", tmp_path / "d.onnx", "--json").stdout)
    assert exported["path"] == str(tmp_path / "d.onnx") and exported["num_batchnorm"] == 6
    stamped = json.loads(run("stamp", tmp_path / "d.onnx", "--mean", "0.5", "--std", "0.5", "--json").stdout)
    assert stamped["preprocessing"]["mean"] == [0.5]
