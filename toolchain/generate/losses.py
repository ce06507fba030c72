"""Loss terms of data generation: BN-statistics alignment, joint-statistics combination, output stretching, FDDA.

Usage:
    objective = BNObjective.build(teacher, config, input_channels=3)   # flat targets and weights
    moments = combine_moments(stored, counts, j, current)                # whole-set moments, grad via batch j
    moments = combine_moments(stored, counts, j, current, dist.all_reduce_sum)   # K processes, own rows each
    loss = objective(moments[0], moments[1])
    out = output_loss("official", logits, last_bn_input, teacher, last_layer)
    centres = ClassObjective(centre_mean, centre_var, weight, config.fdda); centres(m, v, batch_classes)

Flat vectors hold every BN layer's channels in graph order, then (when enabled) the input
pseudo-layer's channels, whose targets are mean 0 and std 1 (or variance 1) per channel. Each layer
weighs 1 / (number of layers) and each of its channels 1 / C_l, so

    L_BN = sum_l 1/L' * [ ||mu_l - mu_l^BN||^2 / C_l + gamma * ||s_l - s_l^BN||^2 / C_l ]

with s = std (DGH, ZeroQ) or variance (FDDA's MSE of mean and variance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from toolchain.generate.config import FDDAConfig, GenerationConfig
from toolchain.generate.teacher import STD_EPS, Teacher

Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BNObjective:
    """The BN-alignment loss over the flat [BN layers..., input pseudo-layer] statistics."""

    target_mean: torch.Tensor
    target_second: torch.Tensor
    weight: torch.Tensor
    gamma: float
    use_std: bool

    @classmethod
    def build(cls, teacher: Teacher, config: GenerationConfig, input_channels: int,
              input_layer: bool | None = None) -> BNObjective:
        input_layer = config.input_layer if input_layer is None else input_layer
        use_std = config.second_moment == "std"
        channels = list(teacher.layout.channels) + ([input_channels] if input_layer else [])
        weight = torch.cat([torch.full((c,), 1.0 / (len(channels) * c)) for c in channels])
        second = teacher.targets.std if use_std else teacher.targets.var
        mean, second = teacher.targets.mean, second
        if input_layer:
            mean = torch.cat([mean, torch.zeros(input_channels)])
            second = torch.cat([second, torch.ones(input_channels)])
        return cls(mean, second, weight, config.std_factor, use_std)

    @property
    def size(self) -> int:
        return int(self.weight.numel())

    def __call__(self, m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
        var = m2 - m1 * m1
        second = torch.sqrt(var.clamp_min(0) + STD_EPS) if self.use_std else var
        return (self.weight * ((m1 - self.target_mean) ** 2 + self.gamma * (second - self.target_second) ** 2)).sum()


def image_moments(x: torch.Tensor) -> torch.Tensor:
    """(2, C) per-channel E[x], E[x^2] of an image batch: the input pseudo-layer's moments."""
    return torch.stack([x.mean((0, 2, 3)), (x * x).mean((0, 2, 3))])


def stored_sum(stored: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(2, T) count-weighted sum over batches of the stored moments (rows of batches held elsewhere are zero)."""
    return torch.einsum("j,jkt->kt", counts, stored)


def combine_moments(stored: torch.Tensor, counts: torch.Tensor, j: int, current: torch.Tensor,
                    reduce: Reduce | None = None) -> torch.Tensor:
    """Moments of the whole image set, (2, T): batch j's live `current` plus every other batch's stored constants.

    stored: (J, 2, T) per-batch E[A], E[A^2]; counts: (J,) images per batch (all J batches). Distributed:
    each process's `stored` holds its own batches' rows (the others zero) and `reduce` sums the weighted
    sum over processes, one all-reduce of (2, T) floats; batch j must be this process's. Single-process
    runs pass None.
    """
    total = stored_sum(stored, counts)
    if reduce is not None:
        total = reduce(total)
    others = total - counts[j] * stored[j]
    return (others + counts[j] * current) / counts.sum()


def output_loss(kind: str, logits: torch.Tensor, last_input: torch.Tensor | None,
                last_mean: torch.Tensor, last_std: torch.Tensor) -> torch.Tensor:
    """DGH's output distribution stretching: mean over images of -(max_k z - min_k z) (+ hinges, official).

    official: + max(0, ||mu_i - mu^BN||^2 / C - 0.5) + max(0, ||sigma_i - sigma^BN||^2 / C - 0.5), with
    mu_i, sigma_i the per-image spatial mean and unbiased std of the last BN node's input.
    """
    z = logits.reshape(logits.shape[0], -1)
    loss = -(z.amax(1) - z.amin(1))
    if kind == "official" and last_input is not None:
        spatial = tuple(range(2, last_input.dim()))
        if spatial and last_input[0, 0].numel() > 1:
            std_i, mean_i = torch.std_mean(last_input, spatial, correction=1)
            channels = last_mean.numel()
            loss = loss + F.relu(((mean_i - last_mean) ** 2).sum(1) / channels - 0.5)
            loss = loss + F.relu(((std_i - last_std) ** 2).sum(1) / channels - 0.5)
    return loss.mean()


@dataclass(frozen=True)
class BatchClasses:
    """The classes present in one batch and the (k, N) matrix averaging each class's images."""

    classes: torch.Tensor
    average: torch.Tensor

    @classmethod
    def of(cls, labels: torch.Tensor) -> BatchClasses:
        classes, inverse = torch.unique(labels, return_inverse=True)
        member = F.one_hot(inverse, len(classes)).T.float()
        return cls(classes, member / member.sum(1, keepdim=True))


class ClassObjective:
    """FDDA's BNS-centralised and BNS-distorted losses over the deep BN layers.

    Class statistics of the synthetic images use the centres' estimator: the average over the class's
    images of per-image spatial means and (biased) variances.
    """

    def __init__(self, centre_mean: torch.Tensor, centre_var: torch.Tensor, weight: torch.Tensor,
                 config: FDDAConfig) -> None:
        self.centre_mean, self.centre_var, self.weight, self.config = centre_mean, centre_var, weight, config

    def __call__(self, image_mean: torch.Tensor, image_var: torch.Tensor, batch: BatchClasses,
                 noise: torch.Generator | None) -> torch.Tensor:
        mean, var = batch.average @ image_mean, batch.average @ image_var
        target_mean, target_var = self.centre_mean[batch.classes], self.centre_var[batch.classes]
        if noise is not None:
            target_mean = target_mean + self.config.mean_noise_std * torch.randn(target_mean.shape, generator=noise)
            target_var = target_var + self.config.var_noise_std * torch.randn(target_var.shape, generator=noise)
        per_class = (self.weight * ((mean - target_mean) ** 2 + (var - target_var) ** 2)).sum(1)
        return per_class.mean()


def deep_weights(teacher: Teacher, start: int) -> torch.Tensor:
    """Per-channel weights 1 / (|S| * C_l) over the deep layers S = start..L-1."""
    channels = teacher.layout.channels[start:]
    return torch.cat([torch.full((c,), 1.0 / (len(channels) * c)) for c in channels])
