"""A small BN ResNet for scikit-learn's handwritten digits (8x8 grayscale), with the preprocessing it was trained with.

Usage:
    from toolchain_models.digits import digits_resnet, preprocessing, weights_path
    model = digits_resnet()                              # random init, input 1x8x8 (NCHW), 10 logits
    state = np.load(weights_path())                      # trained by `python models/train_digits.py`
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x = preprocessing().apply(uint8_nhwc_images)         # (N, 8, 8, 1) uint8 -> (N, 1, 8, 8) float32

Pixels are stored as uint8 0..255: sklearn's digit values 0..16 scaled by 255/16 and rounded. A stored pixel
p becomes (p / PIXEL_SCALE - MEAN) / STD, with MEAN and STD measured on the training split (train_digits.py
prints them). The model is deliberately tiny (19.7k parameters) but keeps every conv followed by a BN,
a residual add and a projection shortcut, so it exercises the same graph patterns as the ImageNet models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from toolchain.onnxio.preprocessing import Preprocessing
from toolchain_models.imagenet import BasicBlock  # same block as ResNet-18: 1x1 conv + BN projection shortcut

PIXEL_SCALE = 255.0
# Mean and standard deviation of p / 255 over every pixel of the training split (1437 images), as printed
# by train_digits.py; the split is train_test_split(test_size=0.2, random_state=0, stratify=labels).
MEAN = (0.3054,)
STD = (0.3760,)
INPUT_SIZE = (8, 8)
CLASS_NAMES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def preprocessing() -> Preprocessing:
    """The Preprocessing (grayscale: one channel) the trained digits weights expect."""
    return Preprocessing(
        mean=MEAN, std=STD, input_size=INPUT_SIZE, pixel_scale=PIXEL_SCALE, class_names=CLASS_NAMES
    )


def weights_path() -> Path:
    """models/artifacts/digits_resnet.npz: the trained state dict, one numpy array per key."""
    return ARTIFACTS / "digits_resnet.npz"


def heldout_path() -> Path:
    """models/artifacts/digits_test.npz: held-out `images` (uint8 NHWC), `labels` (int64), `class_names`."""
    return ARTIFACTS / "digits_test.npz"


class DigitsResNet(nn.Module):
    """Stem conv3x3 1->16 + BN + ReLU, BasicBlock(16) at 8x8, BasicBlock(16->32, stride 2) at 4x4, GAP, linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = BasicBlock(16, 16, stride=1)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.fc = nn.Linear(32, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.fc(torch.flatten(out, 1))


def digits_resnet(num_classes: int = 10) -> DigitsResNet:
    """The digits classifier: 7 BatchNorm layers, 19,706 parameters at 10 classes."""
    return DigitsResNet(num_classes)
