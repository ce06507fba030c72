"""AdaRound: learned up/down rounding of one weight tensor on its fixed per-channel grid.

Usage:
    rounding = AdaRound(weight, scale, axis=0, qmin=-7, qmax=7)   # float weight (numpy), per-channel scale
    soft = rounding.soft_integers()          # floor(w/s) + h(alpha), clamped: float, differentiable in alpha
    loss = rounding.regularizer(beta)        # sum(1 - |2h - 1|^beta): pushes h to 0 or 1
    hard = rounding.hard_integers()          # floor(w/s) + (alpha >= 0), clamped: int64 numpy

h(alpha) = clip(sigmoid(alpha) * 1.2 - 0.1, 0, 1), alpha initialised so that h equals the fractional
part of w/s: before any step, soft_integers() is w/s clamped to the grid (methods.md section 0).

With `start` (integers, e.g. GPTQ's), the rounding starts there instead: of the two neighbours it may
choose between, one is `start` and the other lies one step towards w/s, and h starts (within 1e-4) at
`start`, so before any step soft_integers() is `start` and hard_integers() returns it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch


class AdaRound(nn.Module):
    def __init__(self, weight: np.ndarray, scale: np.ndarray, axis: int, qmin: int, qmax: int,
                 start: np.ndarray | None = None) -> None:
        super().__init__()
        shape = [1] * weight.ndim
        shape[axis] = -1
        scaled = torch.from_numpy(np.array(weight, np.float32)) / torch.from_numpy(np.array(scale, np.float32)).reshape(shape)
        if start is None:
            floor = torch.floor(scaled)
            fraction = (scaled - floor).clamp(1e-4, 1 - 1e-4)
        else:
            integers = torch.from_numpy(np.asarray(start, np.float32).reshape(scaled.shape))
            above = integers >= scaled  # the start is the upper neighbour; the lower one is a step towards w/s
            floor = torch.where(above, integers - 1, integers)
            fraction = torch.where(above, torch.tensor(1 - 1e-4), torch.tensor(1e-4))
        self.floor: torch.Tensor  # a buffer: moves with .to(device), not trained
        self.register_buffer("floor", floor)
        self.qmin, self.qmax = qmin, qmax
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (fraction - GAMMA) - 1))

    def h(self) -> torch.Tensor:
        return (torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def soft_integers(self) -> torch.Tensor:
        return (self.floor + self.h()).clamp(self.qmin, self.qmax)

    def regularizer(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def hard_integers(self) -> np.ndarray:
        with torch.no_grad():
            values = (self.floor + (self.alpha >= 0).float()).clamp(self.qmin, self.qmax)
        return values.cpu().numpy().astype(np.int64)
