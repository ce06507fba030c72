"""ImageNet classifiers in torchvision's layout (ResNet-18, MobileNetV2), written out so torchvision is not needed.

Usage:
    from toolchain_models.imagenet import resnet18, mobilenetv2
    model = resnet18()                       # random init, 3x224x224 RGB input, 1000 logits
    model.load_state_dict(state_dict)        # a torchvision state dict loads: conv1, bn1, layer1.0.conv1, ..., fc
    model = mobilenetv2()                    # keys: features.0.0, features.1.conv.0.0, ..., classifier.1

Parameter and buffer names match torchvision's, so its pretrained weights load with strict=True.
Random initialisation follows torchvision: Kaiming-normal (fan_out) convs, BN weight 1 and bias 0.
"""

from __future__ import annotations

import torch
from torch import nn

from toolchain_models.resnet_cifar import make_stage

# --------------------------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus shortcut (1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # torchvision names the projection "downsample" and leaves it None on identity shortcuts;
        # None (not nn.Identity) keeps the state dict free of extra keys.
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """7x7/2 stem conv + BN + ReLU + 3x3/2 max pool, four stages of BasicBlocks (64/128/256/512), GAP, fc."""

    def __init__(self, blocks_per_stage: tuple[int, int, int, int], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(64, 64, blocks_per_stage[0], stride=1)
        self.layer2 = self._stage(64, 128, blocks_per_stage[1], stride=2)
        self.layer3 = self._stage(128, 256, blocks_per_stage[2], stride=2)
        self.layer4 = self._stage(256, 512, blocks_per_stage[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        return make_stage(BasicBlock, in_planes, planes, blocks, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.avgpool(out)
        return self.fc(torch.flatten(out, 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 (He et al., 2016): 20 BatchNorm layers, 11.7M parameters at 1000 classes."""
    return ResNet((2, 2, 2, 2), num_classes)


# ------------------------------------------------------------------------------------------- MobileNetV2


class ConvBNReLU6(nn.Sequential):
    """conv -> BN -> ReLU6; a Sequential so the keys are .0 (conv) and .1 (BN), as torchvision's Conv2dNormActivation."""

    def __init__(self, in_planes: int, planes: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_planes, planes, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when expand_ratio is 1) -> 3x3 depthwise -> 1x1 linear projection + BN; residual add
    when the block keeps the shape (stride 1, same channels)."""

    def __init__(self, in_planes: int, planes: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_planes * expand_ratio
        self.use_res_connect = stride == 1 and in_planes == planes
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_planes, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            # The projection has no activation: ReLU on a low-dimensional bottleneck destroys information
            # (the "linear bottleneck" of Sandler et al., 2018).
            nn.Conv2d(hidden, planes, 1, 1, 0, bias=False),
            nn.BatchNorm2d(planes),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


# (expand ratio t, output channels c, repeats n, first stride s), from Table 2 of Sandler et al. (2018).
_MOBILENETV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """3x3/2 stem to 32 channels, 17 inverted residual blocks, 1x1 conv to 1280, GAP, dropout, linear."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        in_planes = 32
        layers: list[nn.Module] = [ConvBNReLU6(3, in_planes, stride=2)]
        for t, c, n, s in _MOBILENETV2_SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(in_planes, c, s if i == 0 else 1, t))
                in_planes = c
        layers.append(ConvBNReLU6(in_planes, 1280, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # Dropout at index 0 keeps the Linear at "classifier.1", where torchvision puts it.
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(out, 1))


def mobilenetv2(num_classes: int = 1000) -> MobileNetV2:
    """MobileNetV2 (Sandler et al., 2018), width 1.0: 52 BatchNorm layers, 3.5M parameters at 1000 classes."""
    return MobileNetV2(num_classes)
