"""Export: BN nodes kept, only real layers left, dynamic batch, preprocessing stored, self-verification."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from toolchain import api
from toolchain.errors import ExportError, PreprocessingError
from toolchain.export.exporter import count_batchnorm_modules, export_to_onnx, verify_export
from toolchain.export.zoo import load_zoo_model
from toolchain.onnxio.files import load_model
from toolchain.onnxio.preprocessing import read_preprocessing

SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "ConstantOfShape", "Cast", "Constant", "Identity", "Transpose", "Reshape"}


@pytest.mark.parametrize("name", ["digits_resnet", "resnet32_cifar10", "resnet18", "mobilenetv2"])
def test_export_keeps_every_batchnorm_and_only_real_layers(name):
    """Every BatchNorm module becomes a BatchNormalization node; no shape-computation node survives clean-up."""
    loaded = load_zoo_model(name)
    pre = loaded.preprocessing
    example = torch.zeros(1, pre.num_channels, *pre.input_size)
    model = export_to_onnx(loaded.module, example, pre, source=name)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("BatchNormalization") == count_batchnorm_modules(loaded.module) > 0
    assert not SHAPE_OPS & set(ops), f"shape-computation ops left: {SHAPE_OPS & set(ops)}"
    assert all(node.name for node in model.graph.node), "every node needs a stable name"
    assert next(o.version for o in model.opset_import if o.domain == "") >= 17
    assert read_preprocessing(model) == pre


def test_exported_graph_has_dynamic_batch_and_matches_torch(tmp_path):
    """The written file accepts any batch size; onnxruntime matches PyTorch within max|diff|/max|ref| <= 1e-5."""
    report = api.export_model("digits_resnet", tmp_path / "digits.onnx")  # committed weights: deterministic
    assert report.num_batchnorm == 6 and report.relative_diff <= 1e-5
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    module = load_zoo_model("digits_resnet").module
    for batch in (1, 7):
        x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
        got = session.run(None, {"input": x.numpy()})[0]
        want = module(x).detach().numpy()
        assert got.shape == (batch, 10)
        assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5


def test_verification_catches_a_graph_that_disagrees_with_the_module():
    """verify_export raises ExportError when onnxruntime's output differs from the module's (here: other weights)."""
    first = load_zoo_model("digits_resnet")
    pre = first.preprocessing
    example = torch.zeros(1, 1, *pre.input_size)
    model = export_to_onnx(first.module, example, pre)
    other = load_zoo_model("toolchain_models.digits:digits_resnet")  # random weights
    with pytest.raises(ExportError, match="disagree"):
        verify_export(other.module, model, example)


def test_export_writes_nothing_when_it_fails(tmp_path):
    """A failing export (no preprocessing for a factory model) leaves no file behind."""
    out = tmp_path / "x.onnx"
    with pytest.raises(PreprocessingError, match="carries no preprocessing metadata"):
        api.export_model("toolchain_models.digits:digits_resnet", out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_exported_file_loads_and_passes_checker(tmp_path):
    """The file on disk passes onnx.checker's full check and carries producer and source metadata."""
    report = api.export_model("digits_resnet", tmp_path / "d.onnx")
    model = load_model(report.path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["toolchain.source"] == "digits_resnet" and model.producer_name == "toolchain"


def test_dynamo_exporter_keeps_batchnorm_and_folds_its_shape_arithmetic(tmp_path):
    """`toolchain export --exporter dynamo`: every BN kept, the exporter's Shape/CastLike/Expand chains folded
    away, opset raised to 18 (dynamo's lowest), logits within max|diff|/max|ref| <= 1e-5 of the TorchScript
    export, and nothing of the exporter's own chatter on the user's terminal."""
    from click.testing import CliRunner

    from toolchain.cli.commands import cli

    out = tmp_path / "d.onnx"
    result = CliRunner().invoke(cli, ["export", "digits_resnet", "--exporter", "dynamo", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1 and "6 BatchNormalization kept, opset 18" in result.output
    model = load_model(out)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("BatchNormalization") == 6
    assert not {"Shape", "CastLike", "Expand", "Cast"} & set(ops)
    reference = api.export_model("digits_resnet", tmp_path / "ts.onnx").path
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    got, want = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
                 for p in (out, reference))
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-5


def test_dynamo_exporter_without_onnxscript_says_what_to_install(tmp_path, monkeypatch):
    """Without onnxscript the dynamo exporter cannot run: one line naming the package, exit 2, no file."""
    import importlib.util

    from click.testing import CliRunner

    from toolchain.cli.commands import cli

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real_find_spec(name, *a))
    out = tmp_path / "d.onnx"
    result = CliRunner().invoke(cli, ["export", "digits_resnet", "--exporter", "dynamo", "-o", str(out)])
    assert result.exit_code == 2
    assert "pip install onnxscript" in result.output and "Traceback" not in result.output
    assert not out.exists()
