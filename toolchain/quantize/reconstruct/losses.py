"""The terms of a reconstruction unit's objective (BRECQ / PD-Quant, methods.md section 0).

Usage:
    rec = channel_error(unit_output, fp_target)                    # the reconstruction term
    pd = pd_loss(logits_q, logits_fp, temperature=4.0)             # the prediction-difference term
    total = objective({"rec": 1.2, "pd": 0.01}, pd_weight=10.0)    # what a unit is judged by, regulariser aside
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def channel_error(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over samples (and positions) of the squared error summed over channels (dim 1)."""
    return (y - target).pow(2).sum(1).mean()


def objective(terms: dict[str, float], pd_weight: float | None) -> float:
    """The unit's training objective without the rounding regulariser, from `measure`'s terms."""
    return terms["rec"] + (pd_weight or 0.0) * terms.get("pd", 0.0)


def pd_loss(z_q: torch.Tensor, z_fp: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(z_q / temperature, dim=1), F.softmax(z_fp / temperature, dim=1), reduction="batchmean")
