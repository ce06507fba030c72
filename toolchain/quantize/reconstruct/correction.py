"""Distribution correction (PD-Quant DC): nudge a unit's FP inputs so its BN statistics match, per sample.

Usage:
    targets = bn_targets(model_before_folding)           # BN output tensor -> BnTarget (read before folding)
    corrected = correct_inputs(fp_unit, x, [targets[t] for t in unit_bn_outputs], steps=50, lr=1e-3, lam=0.02)
    corrected = correct_inputs(..., compile=True)       # ImageNet-size units: BN term and update compiled

The FP unit (BN-folded, as the quantizer sees it) returns its output followed by the BN-output tensors
inside it. Folding turned each BatchNormalization into an affine map of the conv output, so the BN
input's per-sample mean and std are recovered exactly from the folded output's:
m_in = mean + (m_out - beta) * sqrt(var + eps) / gamma and s_in = s_out * sqrt(var + eps) / |gamma|.
The loss is PD-Quant's: sum over BN layers of the per-sample squared distance of (mean, std) to the
running (mean, sqrt(var)), plus (1 / lam) * mean_{n,h,w} sum_c (x' - x)^2; Adam with ReduceLROnPlateau.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from toolchain.core.acceleration import RECOMPILE_LIMIT, CompiledForward
from toolchain.executor import OnnxModule

PATIENCE = 100  # steps without progress before ReduceLROnPlateau lowers the rate


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
        if flat.shape[2] > 1:
            var, m_out = torch.var_mean(flat, 2, correction=1)  # one pass over the BN output, not two
            s_out = (var + 1e-6).sqrt()
        else:
            m_out = flat.mean(2)
            s_out = torch.zeros_like(m_out)
        std_r = (t.var + t.epsilon).sqrt()
        gamma = torch.where(t.gamma.abs() < 1e-8, torch.full_like(t.gamma, 1e-8), t.gamma)
        m_in = t.mean + (m_out - t.beta) * std_r / gamma
        s_in = s_out * std_r / gamma.abs()
        total = total + ((t.mean - m_in) ** 2 + (t.var.sqrt() - s_in) ** 2).sum(1).mean()
    return total


def correct_inputs(fp_unit: OnnxModule, x: torch.Tensor, targets: list[BnTarget], steps: int, lr: float,
                   lam: float, compile: bool = False) -> torch.Tensor:
    """x' near x whose BN statistics inside `fp_unit` are closer to the running ones (no grad on the result).

    `compile`: the BN term (the unit's forward and the statistics) and the update (proximity gradient and
    Adam, one fused loop over the input) through torch.compile, with the eager fallback of
    executor.acceleration (a compile costs 1-5 s per unit at 224x224; it halves each step there). The
    values agree with the eager path to float32 rounding; without `compile` it is the eager path, bit for bit
    what it was before the compiled one existed.
    """
    if steps == 0 or not targets:
        return x
    # The input is the largest tensor here (64 x 32 x 112 x 112 on Lite0's second unit): every pass over it counts.
    # It is kept in the unit's layout (no conversion per forward), the proximity term (sum_c (x' - x)^2 averaged
    # over n, h, w = the total sum / (N H W)) and its gradient are computed directly, and Adam is the fused kernel.
    layout = getattr(fp_unit, "input_memory_format", None) if x.dim() == 4 else None
    x = x.contiguous(memory_format=layout) if layout is not None else x
    positions = x.numel() // x.shape[1] if x.dim() > 1 else x.numel()

    def bn_term(images: torch.Tensor) -> torch.Tensor:
        outs = fp_unit(images)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return bn_loss(list(outs[1:]), targets)

    term = CompiledForward(bn_term, compile, "a distribution-correction step")
    if term.active:
        return _correct_fused(term, x, steps, lr, lam * positions)
    corrected = x.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([corrected], lr=lr, fused=True if x.device.type == "cpu" else None)
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=PATIENCE, min_lr=1e-5)
    # The schedule can only lower the rate after more than PATIENCE steps without progress: with fewer steps (the
    # cpu and default presets' 50) it never acts, and the loss it would read costs a pass over the input and a sync.
    scheduled = steps > PATIENCE
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        try:
            loss = term(corrected)
            loss.backward()
        except Exception as err:  # noqa: BLE001 - fall_back re-raises unless it is the first compiled step
            term.fall_back(err)
            optimizer.zero_grad(set_to_none=True)
            loss = term(corrected)
            loss.backward()
        term.confirm()
        with torch.no_grad():  # the proximity term's gradient 2 (x' - x) / (N H W lam), by hand
            diff = corrected - x
            grad = corrected.grad
            assert grad is not None, "loss.backward() filled it"
            grad.add_(diff, alpha=2.0 / (positions * lam))
            proximity = diff.square().sum() / (positions * lam) if scheduled else None
        optimizer.step()
        if proximity is not None:  # scheduled
            schedule.step(float(loss.detach()) + float(proximity))
    return corrected.detach()


def _correct_fused(term: CompiledForward, x: torch.Tensor, steps: int, lr: float, weight: float) -> torch.Tensor:
    """The compiled path: the BN term's gradient by autograd.grad (no .grad buffer to zero), then one compiled
    loop adds the proximity gradient 2 (x' - x) / weight and takes Adam's step (torch's defaults: betas 0.9,
    0.999, eps 1e-8), instead of the five passes of the eager path (difference, add, fused Adam's reads and
    writes, zeroing): 0.81 -> 0.63 s per step on ResNet-18's second unit, 0.21 -> 0.12 s on Lite0's.
    The plateau schedule, when the steps can reach its patience, lowers the rate of a stand-in optimizer."""
    corrected, moment, second = x.clone(), torch.zeros_like(x), torch.zeros_like(x)
    holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)  # carries the schedule's current rate
    schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(holder, patience=PATIENCE, min_lr=1e-5)
    scheduled = steps > PATIENCE
    update = _FusedUpdate()
    for step in range(1, steps + 1):
        leaf = corrected.detach().requires_grad_(True)  # shares corrected's storage; updated in place below
        try:
            loss = term(leaf)
            (grad,) = torch.autograd.grad(loss, leaf)
        except Exception as err:  # noqa: BLE001 - fall_back re-raises unless it is the first compiled step
            term.fall_back(err)
            loss = term(leaf)
            (grad,) = torch.autograd.grad(loss, leaf)
        term.confirm()
        rate = holder.param_groups[0]["lr"]
        with torch.no_grad():
            proximity = float((corrected - x).square().sum()) / weight if scheduled else 0.0
            update(corrected, x, grad, moment, second, torch.tensor(rate / (1 - _BETAS[0] ** step)),
                   torch.tensor((1 - _BETAS[1] ** step) ** 0.5), 2.0 / weight)
        if scheduled:
            schedule.step(float(loss.detach()) + proximity)
    return corrected


_BETAS, _EPS = (0.9, 0.999), 1e-8


def _adam_with_proximity(p: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, moment: torch.Tensor,
                         second: torch.Tensor, step_size: torch.Tensor, bias2_sqrt: torch.Tensor,
                         coefficient: float) -> None:
    """In place: g = grad + coefficient (p - x); Adam's moments; p -= step_size m / (sqrt(v) / bias2_sqrt + eps).
    The step's rates are tensors so that one compiled graph serves every step (a float would be a constant)."""
    g = grad + coefficient * (p - x)
    moment.mul_(_BETAS[0]).add_(g * (1 - _BETAS[0]))
    second.mul_(_BETAS[1]).add_(g * g * (1 - _BETAS[1]))
    p.sub_(step_size * moment / (second.sqrt() / bias2_sqrt + _EPS))


class _FusedUpdate:
    """_adam_with_proximity compiled (one loop over the five tensors), eager from its first failure on."""

    compiled: Callable | None = None  # one torch.compile wrapper for the process: its graphs are cached by shape

    def __init__(self) -> None:
        if _FusedUpdate.compiled is None:
            _FusedUpdate.compiled = torch.compile(_adam_with_proximity, dynamic=False)
        self.failed = False

    def __call__(self, *args: Any) -> None:
        compiled = _FusedUpdate.compiled  # set by __init__
        if not self.failed and compiled is not None:
            try:
                with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                    return compiled(*args)
            except Exception as err:  # noqa: BLE001 - the eager function computes the same values
                self.failed = True
                first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
                # stderr, as CompiledForward.fall_back: a warning filter must not hide a slowdown
                print(f"warning: torch.compile could not compile the distribution-correction update "
                      f"({type(err).__name__}: {first}); running it eagerly (the same values up to float "
                      "rounding, slower); --compile off skips the attempt", file=sys.stderr)
        _adam_with_proximity(*args)
