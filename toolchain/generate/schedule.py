"""Reduce-on-plateau learning-rate schedule, optionally forgetting the best loss after each reduction (DGH).

Usage:
    schedule = PlateauSchedule(optimizer, patience=20, factor=0.5, threshold=1e-4, min_lr=1e-4, reset_best=True)
    schedule.step(loss_value)                 # after every optimiser step of that batch
    state = schedule.state_dict(); schedule.load_state_dict(state)

A step is "better" when loss < best * (1 - threshold). After more than `patience` steps that are not,
the lr becomes max(lr * factor, min_lr) and the counter restarts; with `reset_best` the best value is
forgotten too, so the next step sets a new reference (DGH's ReduceLROnPlateauWithReset), otherwise it is
kept (torch's ReduceLROnPlateau). patience None: the lr never changes.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer


class PlateauSchedule:
    """Per-optimiser plateau schedule (see the module docstring)."""

    def __init__(self, optimizer: Optimizer, patience: int | None, factor: float, threshold: float,
                 min_lr: float, reset_best: bool) -> None:
        self.optimizer = optimizer
        self.patience = patience
        self.factor = factor
        self.threshold = threshold
        self.min_lr = min_lr
        self.reset_best = reset_best
        self.best = math.inf
        self.bad_steps = 0

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, loss: float) -> None:
        if self.patience is None:
            return
        if loss < self.best * (1 - self.threshold):
            self.best, self.bad_steps = loss, 0
        else:
            self.bad_steps += 1
        if self.bad_steps > self.patience:
            for group in self.optimizer.param_groups:
                group["lr"] = max(group["lr"] * self.factor, self.min_lr)
            self.bad_steps = 0
            if self.reset_best:
                self.best = math.inf

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_steps": self.bad_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.bad_steps = int(state["bad_steps"])
