"""Random-weight networks with BN running statistics of their own activations: realistic cost, no training.

Usage:
    module = with_data_statistics(resnet18(), (8, 3, 224, 224))     # any module with BatchNorm layers
    toolchain export toolchain_models.statistics:resnet18_data_bn --input-size 224 \\
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 -o r18.onnx  # the factories below, from the CLI

With the default statistics (mean 0, var 1) deep random networks make activations vanish or explode, so
data generation and reconstruction would measure a degenerate model; with these, every layer carries
signal, and time and memory are those of the trained network (accuracy means nothing).
"""

from __future__ import annotations

import torch

from toolchain_models.imagenet import mobilenetv2, resnet18


def with_data_statistics(module: torch.nn.Module, shape: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    """BN running statistics of `module`'s activations on two Gaussian batches of `shape`; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the batches below
    module.train()
    with torch.no_grad():
        for _ in range(2):
            module(torch.randn(*shape, generator=generator))
    return module.eval()


def resnet18_data_bn() -> torch.nn.Module:
    torch.manual_seed(0)
    return with_data_statistics(resnet18(), (8, 3, 224, 224))


def mobilenetv2_data_bn() -> torch.nn.Module:
    torch.manual_seed(0)
    return with_data_statistics(mobilenetv2(), (8, 3, 224, 224))
