"""DGH's image pipeline: random flip, Gaussian smoothing, random crop from a larger canvas, valid-range clip.

Usage:
    pipe = ImagePipeline(AugmentConfig(), pre)        # canvas = input size + border
    view = pipe.augment(images, generator)            # differentiable: what the model sees at a step
    final = pipe.finalise(images)                     # smoothing, centre crop, clip: the returned images
    pipe.project_(images)                             # in-place clip to the valid range, no grad

The valid range of channel c in normalised space is [(0 - mean_c) / std_c, (1 - mean_c) / std_c].
One flip draw and one crop offset are shared by the whole batch, as in the official code.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from toolchain.generate.config import AugmentConfig
from toolchain.onnxio.preprocessing import Preprocessing


def valid_range(pre: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) per channel, shaped (1, C, 1, 1), in normalised model-input space."""
    mean = torch.tensor(pre.mean, dtype=torch.float32)
    std = torch.tensor(pre.std, dtype=torch.float32)
    shape = (1, len(pre.mean), 1, 1)
    return ((0 - mean) / std).reshape(shape), ((1 - mean) / std).reshape(shape)


def gaussian_kernel(size: int, sigma: float, channels: int) -> torch.Tensor:
    """Depth-wise (channels, 1, size, size) normalised Gaussian kernel."""
    axis = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    one_d = torch.exp(-(axis**2) / (2 * sigma**2))
    kernel = torch.outer(one_d, one_d)
    kernel = kernel / kernel.sum()
    return kernel.expand(channels, 1, size, size).contiguous()


class ImagePipeline:
    """Augmentation and finalisation for images stored on an (H + P) x (W + P) canvas."""

    def __init__(self, config: AugmentConfig, pre: Preprocessing, channels_last: bool = False) -> None:
        self.config = config
        # NHWC canvases: the 3-channel depth-wise blur is ~20x faster in oneDNN's NHWC kernel at 256x256
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.height, self.width = pre.input_size
        self.border = config.resolved_border(self.height)
        self.channels = pre.num_channels
        self.low, self.high = valid_range(pre)
        self.kernel = (gaussian_kernel(config.smoothing_kernel, config.smoothing_sigma, self.channels)
                       .contiguous(memory_format=self.layout) if config.smoothing_sigma > 0 else None)

    @property
    def canvas(self) -> tuple[int, int]:
        return self.height + self.border, self.width + self.border

    def smooth(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            return x
        return F.conv2d(x, self.kernel, padding=self.kernel.shape[-1] // 2, groups=self.channels)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random flip -> smoothing -> random crop (batch-wide draws from `generator`)."""
        if self.config.flip and bool(torch.rand((), generator=generator) < 0.5):
            x = x.flip(3)
        x = self.smooth(x)
        if self.border:
            top, left = (int(v) for v in torch.randint(0, self.border + 1, (2,), generator=generator))
            x = x[:, :, top:top + self.height, left:left + self.width]
        return x

    def finalise(self, x: torch.Tensor) -> torch.Tensor:
        """Smoothing -> centre crop -> clip: the images that leave the generator."""
        x = self.smooth(x)
        if self.border:
            top = left = self.border // 2
            x = x[:, :, top:top + self.height, left:left + self.width]
        return self.clip(x)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x, self.high), self.low)

    @torch.no_grad()
    def project_(self, x: torch.Tensor) -> None:
        """Clip the stored images to the valid range in place (the projection after each step)."""
        torch.maximum(torch.minimum(x, self.high, out=x), self.low, out=x)

    def initial(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """N(0, 1) canvases, clipped to the valid range (DGH's Gaussian initialisation)."""
        x = torch.randn((n, self.channels, *self.canvas), generator=generator)
        return self.clip(x).contiguous(memory_format=self.layout)

    def stored(self, x: torch.Tensor) -> torch.Tensor:
        """`x` in the layout this pipeline keeps its canvases in (a checkpoint's images, either layout)."""
        return x.contiguous(memory_format=self.layout)


def batch_sizes(n: int, batch_size: int) -> list[int]:
    """Split n into ceil(n / batch_size) batches whose sizes differ by at most one."""
    count = math.ceil(n / batch_size)
    base, extra = divmod(n, count)
    return [base + 1 if j < extra else base for j in range(count)]
