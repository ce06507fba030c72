"""Distribution correction (PD-Quant DC): nudge a unit's FP inputs so its BN statistics match, per sample.

Usage:
    targets = bn_targets(model_before_folding)           # BN output tensor -> BnTarget (read before folding)
    corrected = correct_inputs(fp_unit, x, [targets[t] for t in unit_bn_outputs], steps=50, lr=1e-3, lam=0.02)

The FP unit (BN-folded, as the quantizer sees it) returns its output followed by the BN-output tensors
inside it. Folding turned each BatchNormalization into an affine map of the conv output, so the BN
input's per-sample mean and std are recovered exactly from the folded output's:
m_in = mean + (m_out - beta) * sqrt(var + eps) / gamma and s_in = s_out * sqrt(var + eps) / |gamma|.
The loss is PD-Quant's: sum over BN layers of the per-sample squared distance of (mean, std) to the
running (mean, sqrt(var)), plus (1 / lam) * mean_{n,h,w} sum_c (x' - x)^2; Adam with ReduceLROnPlateau.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from toolchain.executor import OnnxModule


@dataclass(frozen=True)
class BnTarget:
    """A BatchNormalization's parameters, keyed by its output tensor (which the folded conv writes)."""

    output: str
    gamma: torch.Tensor
    beta: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    epsilon: float

    def to(self, device: torch.device) -> BnTarget:
        return BnTarget(self.output, self.gamma.to(device), self.beta.to(device), self.mean.to(device),
                        self.var.to(device), self.epsilon)


def bn_targets(model: onnx.ModelProto) -> dict[str, BnTarget]:
    init = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in model.graph.initializer}
    targets = {}
    for node in model.graph.node:
        if node.op_type != "BatchNormalization" or any(name not in init for name in node.input[1:5]):
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (torch.from_numpy(init[name]) for name in node.input[1:5])
        targets[node.output[0]] = BnTarget(node.output[0], gamma, beta, mean, var, float(eps))
    return targets


def bn_loss(outputs: list[torch.Tensor], targets: list[BnTarget]) -> torch.Tensor:
    """Per-sample (mean, std) distance of each BN input to its running statistics, averaged over samples."""
    total = outputs[0].new_zeros(())
    for y, t in zip(outputs, targets):
        flat = y.flatten(2)  # N, C, H*W
        m_out = flat.mean(2)
        s_out = (flat.var(2, unbiased=True) + 1e-6).sqrt() if flat.shape[2] > 1 else torch.zeros_like(m_out)
        std_r = (t.var + t.epsilon).sqrt()
        gamma = torch.where(t.gamma.abs() < 1e-8, torch.full_like(t.gamma, 1e-8), t.gamma)
        m_in = t.mean + (m_out - t.beta) * std_r / gamma
        s_in = s_out * std_r / gamma.abs()
        total = total + ((t.mean - m_in) ** 2 + (t.var.sqrt() - s_in) ** 2).sum(1).mean()
    return total


def correct_inputs(fp_unit: OnnxModule, x: torch.Tensor, targets: list[BnTarget], steps: int, lr: float,
                   lam: float) -> torch.Tensor:
    """x' near x whose BN statistics inside `fp_unit` are closer to the running ones (no grad on the result)."""
    if steps == 0 or not targets:
        return x
    corrected = x.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([corrected], lr=lr)
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=100, min_lr=1e-5)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        outs = fp_unit(corrected)
        outs = outs if isinstance(outs, tuple) else (outs,)
        loss = bn_loss(list(outs[1:]), targets) + (corrected - x).pow(2).sum(1).mean() / lam
        loss.backward()
        optimizer.step()
        schedule.step(loss.item())
    return corrected.detach()
