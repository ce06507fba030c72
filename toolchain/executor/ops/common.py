"""Helpers shared by the kernel builders: padding layouts, axes, scalars."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from toolchain.executor.registry import NodeContext

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


def nd_fn(rank: int, name: str) -> Callable[..., torch.Tensor]:
    """F.conv1d/2d/3d, F.max_pool1d/2d/3d, ... for a kernel with `rank` spatial dims."""
    return getattr(F, f"{name}{rank}d")


def onnx_to_torch_pads(onnx_pads: Sequence[int]) -> tuple[int, ...]:
    """ONNX [b1, b2, ..., e1, e2, ...] over the last len/2 dims -> F.pad's (last_b, last_e, ...), trailing zeros cut."""
    half = len(onnx_pads) // 2
    pairs = [(onnx_pads[i], onnx_pads[i + half]) for i in reversed(range(half))]
    while pairs and pairs[-1] == (0, 0):  # F.pad is cheaper with fewer dims to visit
        pairs.pop()
    return tuple(v for pair in pairs for v in pair)


def same_pads(x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
               upper: bool) -> list[int]:
    """ONNX auto_pad SAME_UPPER/SAME_LOWER pads for the spatial dims of `x` (known only at run time)."""
    begins, ends = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins + ends


def spatial_padding(ctx: NodeContext, rank: int) -> tuple[str, list[int]]:
    """('explicit', pads) or ('same_upper'/'same_lower', []) from auto_pad and pads."""
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = list(ctx.attr("pads", [0] * (2 * rank)))
        if len(pads) != 2 * rank:
            raise ctx.error(f"pads has {len(pads)} values for {rank} spatial dims; give 2 per dim")
        return "explicit", pads
    if auto_pad == "VALID":
        return "explicit", [0] * (2 * rank)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return auto_pad.lower(), []
    raise ctx.error(f"auto_pad={auto_pad!r} is not an ONNX value; use NOTSET, VALID, SAME_UPPER or SAME_LOWER")


def scalar(value: np.ndarray) -> float:
    """A one-element array (shape () or (1,), as exporters write bounds) as a Python float."""
    return float(np.asarray(value).reshape(-1)[0])


def normalise_axes(axes: Sequence[int], rank: int) -> list[int]:
    return [a + rank if a < 0 else a for a in axes]


