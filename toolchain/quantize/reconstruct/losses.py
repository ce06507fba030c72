"""The terms of a reconstruction unit's objective (BRECQ / PD-Quant, methods.md section 0).

Usage:
    rec = channel_error(unit_output, fp_target)                    # the reconstruction term
    pd = pd_loss(logits_q, logits_fp, temperature=4.0)             # the prediction-difference term

A unit is judged by LossTerms.objective (quantize.report_sections): these terms measured, the regulariser aside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def channel_error(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over samples (and positions) of the squared error summed over channels (dim 1)."""
    return (y - target).pow(2).sum(1).mean()


def pd_loss(z_q: torch.Tensor, z_fp: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(z_q / temperature, dim=1), F.softmax(z_fp / temperature, dim=1), reduction="batchmean")
