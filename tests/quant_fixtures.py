"""Small float models and calibration inputs shared by the quantizer tests (exported once per session)."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from toolchain.export.exporter import export_to_onnx
from toolchain.export.zoo import load_zoo_model
from toolchain.onnxio.preprocessing import CIFAR10_CLASSES, IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from toolchain_models.statistics import with_data_statistics


def export_random(factory: str, size: int, channels: int = 3, seed: int = 0) -> onnx.ModelProto:
    torch.manual_seed(seed)
    module = with_data_statistics(load_zoo_model(factory).module, (8, channels, size, size), seed)
    pre = Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(size, size),
                        class_names=CIFAR10_CLASSES if size == 32 else None)
    return export_to_onnx(module, torch.zeros(1, channels, size, size), pre)


def gaussian_inputs(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
