"""Small models with the block patterns of torchvision's architecture families, for tests and CIFAR training.

Usage:
    from toolchain_models.families import FAMILIES, export_as_users_do, family_model
    model = family_model("mobilenet_v3")             # random init, eval mode, 10 classes
    export_as_users_do(model, "mnv3.onnx", "dynamo")  # torch.onnx as a user calls it (or "torchscript")
    FAMILIES["shufflenet_v2"].input_size             # (32, 32)
    mobilenet_v3_cifar(), shufflenet_v2_cifar()      # the widths trained on CIFAR-10 (models/train_cifar.py)

Each definition keeps what makes its family hard to quantize or to export, at a few thousand
parameters: MobileNetV3's HardSwish and SE gate (HardSigmoid, Mul), EfficientNet's SiLU and Sigmoid SE,
RegNet/ResNeXt's group convolutions, ShuffleNetV2's split / channel shuffle (x.size() arithmetic) /
concat, SqueezeNet's fire modules without BN, GoogLeNet's inception branches with ceil-mode MaxPool,
DenseNet's pre-activation BN and concatenated features, MnasNet's mean pooling (ReduceMean), ConvNeXt's
LayerNorm / GELU / channels-last Linear (MatMul), and a ViT's patch embedding, class token and
attention (activation x activation MatMul, Softmax). torchvision itself is not imported: its wheel on
the package index is linked against a CUDA build of torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

Act = Callable[[], nn.Module]


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: Act | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias) -> BN -> activation, the unit every BN family is built from."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Global pool -> 1x1 conv -> act -> 1x1 conv -> gate, multiplied onto the input (MobileNetV3, EfficientNet, RegNetY)."""

    def __init__(self, channels: int, squeeze: int, act: Act = nn.ReLU, gate: Act = nn.Hardsigmoid) -> None:
        super().__init__()
        self.fc1, self.act = nn.Conv2d(channels, squeeze, 1), act()
        self.fc2, self.gate = nn.Conv2d(squeeze, channels, 1), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk -> (SE) -> project 1x1, residual when the shape is kept (MobileNetV2/V3, EfficientNet, MnasNet)."""

    def __init__(self, cin: int, expand: int, cout: int, k: int, stride: int, act: Act, se: SqueezeExcite | None) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(cin, expand, 1, act=act)] if expand != cin else []
        layers.append(conv_bn(expand, expand, k, stride, groups=expand, act=act))
        if se is not None:
            layers.append(se)
        layers.append(conv_bn(expand, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# Per block: (expanded channels, output channels, kernel, stride, squeeze-excite)
Stages = list[tuple[int, int, int, int, bool]]


class MobileNetV3(nn.Module):
    """Stem conv + HardSwish, inverted residuals with HardSigmoid SE, pool, Linear -> HardSwish -> Linear."""

    def __init__(self, stem: int = 8, blocks: Stages | None = None, head: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        blocks = blocks or [(8, 8, 3, 2, True), (24, 12, 3, 2, False), (36, 12, 5, 1, True)]
        layers: list[nn.Module] = [conv_bn(3, stem, 3, 2 if stem > 8 else 1, act=nn.Hardswish)]
        cin = stem
        for i, (expand, cout, k, stride, se) in enumerate(blocks):
            act = nn.ReLU if i == 0 else nn.Hardswish
            excite = SqueezeExcite(expand, max(8, expand // 4), nn.ReLU, nn.Hardsigmoid) if se else None
            layers.append(InvertedResidual(cin, expand, cout, k, stride, act, excite))
            cin = cout
        layers.append(conv_bn(cin, cin * 4, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(cin * 4, head), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(head, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class EfficientNet(nn.Module):
    """MBConv blocks with SiLU (exported as Sigmoid * x) and a Sigmoid-gated SE, pool, Dropout, Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 8, 3, 1, act=nn.SiLU)]
        cin = 8
        for expand, cout, k, stride in [(8, 8, 3, 1), (32, 12, 3, 2), (48, 12, 5, 1)]:
            excite = SqueezeExcite(expand, max(4, cin // 4), nn.SiLU, nn.Sigmoid)
            layers.append(InvertedResidual(cin, expand, cout, k, stride, nn.SiLU, excite))
            cin = cout
        layers.append(conv_bn(cin, 48, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(48, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class MnasNet(nn.Module):
    """ReLU inverted residuals, pooled with x.mean([2, 3]) (exported as ReduceMean)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 8, 3, 1)]
        cin = 8
        for expand, cout, k, stride in [(8, 8, 3, 1), (24, 12, 3, 2), (36, 12, 5, 1)]:
            layers.append(InvertedResidual(cin, expand, cout, k, stride, nn.ReLU, None))
            cin = cout
        self.features = nn.Sequential(*layers, conv_bn(cin, 32, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean([2, 3]))


class GroupBottleneck(nn.Module):
    """1x1 -> grouped 3x3 -> (SE) -> 1x1, projection shortcut, Add, ReLU (ResNeXt, RegNetX / RegNetY)."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int, se: bool) -> None:
        super().__init__()
        layers = [conv_bn(cin, cout, 1), conv_bn(cout, cout, 3, stride, groups=cout // group_width)]
        if se:
            layers.append(SqueezeExcite(cout, max(4, cin // 4), nn.ReLU, nn.Sigmoid))
        layers.append(conv_bn(cout, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.shortcut = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.block(x) + self.shortcut(x))


class GroupConvNet(nn.Module):
    """Stem, group-conv bottlenecks (with SE for the RegNetY pattern), pool, Linear."""

    def __init__(self, se: bool, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 1)
        self.stages = nn.Sequential(GroupBottleneck(8, 16, 2, 4, se), GroupBottleneck(16, 16, 1, 4, se), GroupBottleneck(16, 32, 2, 8, se))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's shuffle, from x.size(): exports as Shape/Gather/Div arithmetic feeding two Reshapes."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2).contiguous()
    return x.view(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: stride 1 splits the channels (chunk) and keeps one half; stride 2 runs two branches."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None), conv_bn(cin, half, 1))
        source = cin if stride > 1 else half
        self.branch2 = nn.Sequential(conv_bn(source, half, 1), conv_bn(half, half, 3, stride, groups=half, act=None), conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, processed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(processed)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """Stem conv + MaxPool, stages of shuffle units (first of each strided), 1x1 conv, mean pool, Linear."""

    def __init__(self, stem: int = 8, stages: tuple[tuple[int, int], ...] = ((16, 2), (32, 2)), head: int = 64,
                 num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, stem, 3, 1), nn.MaxPool2d(3, 2, 1)]
        cin = stem
        for cout, repeats in stages:
            layers += [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(repeats - 1)]
            cin = cout
        self.features = nn.Sequential(*layers, conv_bn(cin, head, 1))
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean([2, 3]))


class Fire(nn.Module):
    """SqueezeNet fire module: squeeze 1x1 + ReLU, then expand 1x1 and 3x3 (+ ReLU) concatenated. No BN."""

    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1, self.expand3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1(s)), F.relu(self.expand3(s))], 1)


class SqueezeNet(nn.Module):
    """Conv + ReLU, ceil-mode MaxPools, fire modules, Dropout, 1x1 conv classifier + ReLU, global pool."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      Fire(16, 8, 16), Fire(32, 8, 16), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(32, 12, 24))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(48, num_classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


class Inception(nn.Module):
    """Four branches concatenated: 1x1; 1x1 -> 3x3; 1x1 -> 3x3 (torchvision's "5x5"); 3x3 MaxPool (ceil) -> 1x1."""

    def __init__(self, cin: int, b1: int, b2: tuple[int, int], b3: tuple[int, int], b4: int) -> None:
        super().__init__()
        self.branch1 = conv_bn(cin, b1, 1)
        self.branch2 = nn.Sequential(conv_bn(cin, b2[0], 1), conv_bn(b2[0], b2[1], 3))
        self.branch3 = nn.Sequential(conv_bn(cin, b3[0], 1), conv_bn(b3[0], b3[1], 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_bn(cin, b4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    """Stem conv, ceil-mode MaxPool, two inception blocks, pool, Dropout, Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16, 3), nn.MaxPool2d(3, 2, ceil_mode=True), Inception(16, 8, (8, 12), (4, 8), 4),
                                      Inception(32, 12, (12, 16), (4, 8), 8), nn.MaxPool2d(3, 2, ceil_mode=True))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(44, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class DenseLayer(nn.Module):
    """Pre-activation BN -> ReLU -> 1x1 conv -> BN -> ReLU -> 3x3 conv, concatenated onto the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(2 * growth), nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        return torch.cat([x, self.conv2(F.relu(self.norm2(y)))], 1)


class DenseNet(nn.Module):
    """Stem, a dense block, a transition (BN -> ReLU -> 1x1 conv -> AvgPool), a dense block, BN -> ReLU, pool, Linear."""

    def __init__(self, growth: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        channels = 16
        for block in range(2):
            for _ in range(2):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            if block == 0:
                layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
                channels //= 2
        self.features = nn.Sequential(*layers, nn.BatchNorm2d(channels), nn.ReLU())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class ChannelsFirstLayerNorm(nn.Module):
    """ConvNeXt's LayerNorm over channels of an NCHW tensor: permute, F.layer_norm, permute back."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 -> channels-last LayerNorm -> Linear -> GELU -> Linear -> layer scale (Mul), residual Add."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """Patchify stem (4x4 stride 4) + LayerNorm, blocks, downsampling (LayerNorm + 2x2 stride 2), pool, LayerNorm, Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 4, 4), ChannelsFirstLayerNorm(16), ConvNeXtBlock(16),
                                      ChannelsFirstLayerNorm(16), nn.Conv2d(16, 32, 2, 2), ConvNeXtBlock(32))
        self.norm, self.head = nn.LayerNorm(32, eps=1e-6), nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.features(x).mean([2, 3])))


class Attention(nn.Module):
    """Multi-head self-attention written out: qkv Linear, reshape/permute from x.shape, q @ k^T, Softmax, @ v, proj."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attention = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, dim))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(LN(x)); x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding conv, class token (expanded to the batch), position embedding, blocks, LayerNorm, head on the class token."""

    def __init__(self, dim: int = 32, patch: int = 8, image: int = 32, depth: int = 2, heads: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.position = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.position
        return self.head(self.norm(self.blocks(x))[:, 0])


@dataclass(frozen=True)
class Family:
    """One architecture family: its factory, input size, and whether it has BN statistics to match."""

    name: str
    factory: Callable[[], nn.Module]
    input_size: tuple[int, int] = (32, 32)
    has_batchnorm: bool = True


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("mobilenet_v3", MobileNetV3),
    Family("efficientnet", EfficientNet),
    Family("regnet", lambda: GroupConvNet(se=True)),
    Family("resnext", lambda: GroupConvNet(se=False)),
    Family("shufflenet_v2", ShuffleNetV2),
    Family("squeezenet", SqueezeNet, has_batchnorm=False),
    Family("googlenet", GoogLeNet),
    Family("densenet", DenseNet),
    Family("mnasnet", MnasNet),
    Family("convnext", ConvNeXt, has_batchnorm=False),
    Family("vit", VisionTransformer, has_batchnorm=False),
]}


def family_model(name: str, seed: int = 0) -> nn.Module:
    """The family's small model with seeded random weights and non-trivial BN statistics, in eval mode."""
    torch.manual_seed(seed)
    model = FAMILIES[name].factory()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            n = bn.num_features
            bn.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
            bn.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
            bn.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return model.eval()


def mobilenet_v3_cifar(num_classes: int = 10) -> MobileNetV3:
    """The MobileNetV3-style net trained on CIFAR-10 (models/train_cifar.py): ~0.2 M parameters."""
    blocks: Stages = [(16, 16, 3, 1, True), (64, 24, 3, 2, False), (72, 24, 3, 1, False), (96, 40, 5, 2, True),
                      (160, 40, 5, 1, True), (160, 48, 5, 1, True), (192, 64, 5, 2, True), (256, 64, 5, 1, True)]
    return MobileNetV3(stem=16, blocks=blocks, head=256, num_classes=num_classes)


def shufflenet_v2_cifar(num_classes: int = 10) -> ShuffleNetV2:
    """The ShuffleNetV2-style net trained on CIFAR-10 (models/train_cifar.py): ~0.3 M parameters."""
    return ShuffleNetV2(stem=24, stages=((64, 3), (128, 4), (256, 2)), head=512, num_classes=num_classes)


def export_as_users_do(module: nn.Module, path: str | Path, exporter: str, size: int = 32) -> Path:
    """torch.onnx.export as users call it, batch dynamic: "torchscript" (dynamo=False, BN kept with
    TrainingMode.PRESERVE, no constant folding) or "dynamo" (dynamo=True, optimize=False; needs onnxscript)."""
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer warnings
        if exporter == "dynamo":
            torch.onnx.export(module, (x,), str(path), dynamo=True, optimize=False, input_names=["input"],
                              output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        elif exporter == "torchscript":
            torch.onnx.export(module, (x,), str(path), dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,
                              do_constant_folding=False, opset_version=17, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        else:
            raise ValueError(f"exporter {exporter!r}: use 'torchscript' or 'dynamo'")
    return Path(path)
