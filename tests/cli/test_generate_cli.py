"""`toolchain generate` as a user runs it: the calibration file and its manifest; one-line errors, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from toolchain import api
from toolchain.cli.commands import cli
from toolchain.data.calibration import load_calibration
from toolchain.export.zoo import default_eval_data

from cli_helpers import assert_user_error


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return api.export_model("digits_resnet", tmp_path_factory.mktemp("g") / "digits.onnx").path


def test_generate_writes_inputs_and_manifest(digits, tmp_path):
    """dgh (fast preset): float32 NCHW inputs in the model's format and a manifest with method, preset, seed, model hash, losses."""
    out = tmp_path / "dgh.npz"
    result = run("generate", digits, "--method", "dgh", "-n", 32, "--preset", "fast", "--seed", 5, "-o", out)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "final BN distance" in result.output
    calib = load_calibration(out)
    assert calib.inputs.shape == (32, 1, 8, 8) and calib.inputs.dtype == np.float32
    manifest = calib.manifest
    for key in ("method", "preset", "seed", "model_sha256", "losses", "wall_time_s", "toolchain_version", "config"):
        assert key in manifest, key
    assert manifest["method"] == "dgh" and manifest["seed"] == 5 and manifest["preset"] == "fast"
    assert not list(tmp_path.glob("*.ckpt*")), "the checkpoint is removed once the output is written"


def test_generated_set_feeds_the_quantizer(digits, tmp_path):
    """The generated .npz is a calibration set `toolchain quantize` accepts as is."""
    calib = tmp_path / "g.npz"
    assert run("generate", digits, "--method", "gaussian", "-n", 16, "-o", calib).exit_code == 0
    result = run("quantize", digits, "--calib", calib, "-o", tmp_path / "q.onnx")
    assert result.exit_code == 0, result.output


def test_fdda_with_labelled_data(digits, tmp_path):
    """fdda with one real image per class: labels are written and cover every class."""
    out = tmp_path / "fdda.npz"
    result = run("generate", digits, "--method", "fdda", "-n", 20, "--preset", "fast", "--data", default_eval_data(), "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(set(load_calibration(out).labels.tolist())) == list(range(10))


def test_model_without_batchnorm(tmp_path):
    """A model without BN nodes: explains that BN was folded, suggests `toolchain export` or --method real."""
    import torch

    from toolchain.export.zoo import load_zoo_model

    path = tmp_path / "folded.onnx"
    torch.onnx.export(load_zoo_model("digits_resnet").module, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False)
    api.stamp_model(path, api.PreprocessingOverrides(mean=(0.3,), std=(0.4,)))
    assert_user_error(run("generate", path, "-n", 16, "-o", tmp_path / "x.npz"), "toolchain export", "--method real")
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("args, needle", [
    (["--method", "fdda"], "--data"),
    (["-n", "8", "--batch-size", "16"], "batch size"),
    (["-n", "0"], "n"),
])
def test_bad_generation_requests(digits, tmp_path, args, needle):
    """fdda without labelled data, N smaller than the batch, N = 0: one line each, nothing written."""
    out = tmp_path / "x.npz"
    assert_user_error(run("generate", digits, "--preset", "fast", "-o", out, *args), needle)
    assert not list(tmp_path.iterdir())


def test_fdda_with_a_class_missing(digits, tmp_path):
    """fdda with labelled data lacking some classes: names the missing classes."""
    data = np.load(default_eval_data())
    keep = data["labels"] < 8
    partial = tmp_path / "partial.npz"
    np.savez(partial, images=data["images"][keep], labels=data["labels"][keep], class_names=data["class_names"])
    assert_user_error(run("generate", digits, "--method", "fdda", "-n", 20, "--preset", "fast", "--data", partial,
                          "-o", tmp_path / "x.npz"), "8", "9")
    assert not (tmp_path / "x.npz").exists()


def test_existing_output_needs_overwrite(digits, tmp_path):
    """An existing output is not replaced without --overwrite."""
    out = tmp_path / "x.npz"
    out.write_bytes(b"keep")
    assert_user_error(run("generate", digits, "-n", 16, "--preset", "fast", "-o", out), "--overwrite")
    assert out.read_bytes() == b"keep"
