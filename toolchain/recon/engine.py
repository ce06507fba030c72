"""Unit-by-unit reconstruction (BRECQ / PD-Quant) of a quantized graph, through the torch executor.

Usage:
    result = reconstruct(float_model, plan, act, weights, calib, recon, bn=bn_targets(cleaned_model))
    qdq = materialize(float_model, plan, result.activations, result.weights, storage, result.weight_integers)
    result.units      # per unit: kind, tensors, loss terms before/after, seconds

Contract: `float_model` is the BN-folded float graph the quantizer annotated into `plan`; `act` and
`weights` are the calibrator's parameters (the initialisation). Units are processed in graph order; each
one is trained on the quantized graph as it stands (finished units hard-rounded), cut out with
`subgraph.extract` and run by `OnnxModule`, so what is optimised is the QDQ graph itself:
- the unit's input from the already-quantized network (X_q) and from the FP network (X_fp, moved toward
  the BN statistics by distribution correction when on); the target is the FP unit on that input;
- AdaRound variables replace the weights' integer initializers (soft integers behind the same
  DequantizeLinear); activation step sizes are the QuantizeLinear/DequantizeLinear scale initializers;
- QDrop is a hook on the unit's QuantizeLinear nodes letting a random half of the elements through;
- the PD term runs the unit's quantized output through the FP rest of the network (cut at the unit).
It returns new parameters (same zero points) and hard-rounded integers. With a `resume_point`
the state is checkpointed after every finished unit and a resumed run skips those units;
a non-finite loss stops with ReconstructionError naming the unit (and the checkpoint that keeps the
finished ones); the caller then writes no model.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from tqdm import tqdm

from toolchain.errors import ToolchainError
from toolchain.executor import OnnxModule
from toolchain.quant.annotate import QuantPlan
from toolchain.quant.materialize import materialize
from toolchain.quant.qparams import QParams
from toolchain.recon.adaround import AdaRound
from toolchain.recon.config import ReconConfig
from toolchain.recon.correction import BnTarget, correct_inputs
from toolchain.recon.resume import Progress, ResumePoint, load_progress, save_progress
from toolchain.recon.subgraph import extract
from toolchain.recon.units import Unit, find_units

EVAL_SAMPLES = 64  # samples on which each unit's loss is measured before and after


class ReconstructionError(ToolchainError):
    """Reconstruction cannot go on (diverged, or the calibration set does not fit the settings)."""


@dataclass
class ReconResult:
    config: ReconConfig  # what ran: model-dependent defaults (pd_weight) resolved
    activations: dict[str, QParams]
    weights: dict[str, QParams]
    weight_integers: dict[str, np.ndarray]
    units: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _run(module: OnnxModule, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        parts = [module(x[i:i + batch]) for i in range(0, len(x), batch)]
    first = [p[0] if isinstance(p, tuple) else p for p in parts]
    return torch.cat(first)


def _channel_error(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over samples (and positions) of the squared error summed over channels (dim 1)."""
    return (y - target).pow(2).sum(1).mean()


def _pd_loss(z_q: torch.Tensor, z_fp: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(z_q / temperature, dim=1), F.softmax(z_fp / temperature, dim=1), reduction="batchmean")


class _Trainer:
    def __init__(self, float_model: onnx.ModelProto, plan: QuantPlan, act: dict[str, QParams],
                 weights: dict[str, QParams], calib: np.ndarray, recon: ReconConfig, bn: dict[str, BnTarget],
                 progress: bool) -> None:
        self.float_model, self.plan, self.recon, self.bn, self.progress = float_model, plan, recon, bn, progress
        self.act, self.weights = dict(act), dict(weights)
        self.integers: dict[str, np.ndarray] = {}
        self.images = torch.from_numpy(np.ascontiguousarray(calib, np.float32))
        self.image_input = next(i.name for i in float_model.graph.input
                                if i.name not in {t.name for t in float_model.graph.initializer})
        self.output = float_model.graph.output[0].name
        self.float_weights = {w: numpy_helper.to_array(i) for i in float_model.graph.initializer
                              for w in [i.name] if w in plan.weights}
        self.generator = torch.Generator().manual_seed(recon.seed)
        self.z_fp = _run(OnnxModule(extract(float_model, [self.image_input], [self.output])), self.images)
        self._next_inputs: tuple[str, torch.Tensor, torch.Tensor] | None = None  # (tensor, FP values, quantized values)
        self._qdq: onnx.ModelProto | None = None  # the QDQ model as the last finished unit left it

    # -------------------------------------------------------------------------------- graph plumbing

    def qdq_model(self) -> onnx.ModelProto:
        """The QDQ graph as it stands: native low-bit types, learned integers of finished units."""
        return materialize(self.float_model, self.plan, self.act, self.weights, "native", self.integers)

    def q_name(self, tensor: str) -> str:
        """The QDQ graph's name of the quantized (dequantized) value of float tensor `tensor`."""
        if tensor == self.image_input:
            return tensor  # the unit that reads the image holds the input's Q/DQ
        return tensor if tensor == self.output else f"{tensor}_dequantized"

    # ------------------------------------------------------------------------------------ one unit

    def unit(self, unit: Unit, bar_position: int) -> dict:
        recon, started = self.recon, time.perf_counter()
        qdq = self._qdq if self._qdq is not None else self.qdq_model()  # nothing changed since the previous unit ended
        q_in, q_out = self.q_name(unit.input), self.q_name(unit.output)
        if unit.input == self.image_input:
            x_q = x_fp = self.images
        elif self._next_inputs is not None and self._next_inputs[0] == unit.input:
            # The previous unit ended where this one starts (consecutive cuts): its outputs, computed once,
            # instead of the whole prefix again (which made reconstruction quadratic in the number of units).
            _, x_fp, x_q = self._next_inputs
        else:
            x_q = _run(OnnxModule(extract(qdq, [self.image_input], [q_in])), self.images)
            x_fp = _run(OnnxModule(extract(self.float_model, [self.image_input], [unit.input])), self.images)
        self._next_inputs = None
        x_fp_uncorrected = x_fp
        bn_outputs = [t for t in self.bn if t in self._float_tensors(unit)]
        fp_unit = OnnxModule(extract(self.float_model, [unit.input], [unit.output, *bn_outputs]))
        if recon.distribution_correction and bn_outputs:
            targets = [self.bn[t] for t in bn_outputs]
            x_fp = torch.cat([correct_inputs(fp_unit, x_fp[i:i + recon.dc_batch_size], targets, recon.dc_steps,
                                             recon.dc_lr, recon.dc_lambda)
                              for i in range(0, len(x_fp), recon.dc_batch_size)])
        y_fp = _run(fp_unit, x_fp)
        use_pd = recon.prediction_difference and unit.decides_prediction
        tail = None
        if use_pd and unit.output != self.output:
            tail = OnnxModule(extract(self.float_model, [unit.output], [self.output]))
            tail.requires_grad_(False)

        module = OnnxModule(extract(qdq, [q_in], [q_out]), trainable=True)
        module.requires_grad_(False)
        roundings = {w: self._adaround(w) for w in unit.weights}
        scales = self._scale_parameters(module) if recon.learn_scales else {}
        quantizers = [name for op, name in module.runtime_nodes if op == "QuantizeLinear"]

        def measure(hard: bool) -> dict:
            index = torch.arange(min(EVAL_SAMPLES, len(self.images)))
            with torch.no_grad():
                for w, rounding in roundings.items():
                    ints = rounding.hard_integers() if hard else self.weights[w].quantize(self.float_weights[w])
                    module.set_initializer(f"{w}_quantized", torch.from_numpy(ints.astype(np.float32)))
                out = module(x_q[index])
                terms = {"rec": float(_channel_error(out, y_fp[index]))}
                if use_pd:
                    z_q = tail(out) if tail is not None else out
                    terms["pd"] = float(_pd_loss(z_q, self.z_fp[index], recon.temperature))
            return terms

        before = measure(hard=False)
        params = [{"params": [r.alpha for r in roundings.values()], "lr": recon.round_lr}]
        optimizer = torch.optim.Adam(params)
        scale_optimizer = torch.optim.Adam(list(scales.values()), lr=recon.scale_lr) if scales else None
        scale_schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(scale_optimizer, T_max=recon.iterations, eta_min=0.0)
                          if scale_optimizer else None)
        n, batch = len(self.images), min(recon.batch_size, len(self.images))
        warm = int(recon.warmup * recon.iterations)
        bar = tqdm(range(recon.iterations), desc=f"{unit.label[:48]}", unit="it", file=sys.stderr,
                   disable=not self.progress, leave=False, position=bar_position)
        qdrop_hooks = {q: self._qdrop_hook() for q in quantizers} if recon.qdrop else {}
        for step in bar:
            index = torch.randint(0, n, (batch,), generator=self.generator)
            xq = x_q[index]
            inputs = xq
            if recon.qdrop:
                keep = torch.rand(xq.shape, generator=self.generator) < 0.5
                inputs = torch.where(keep, xq, x_fp[index])
            if use_pd:
                inputs = torch.cat([inputs, xq])
            for w, rounding in roundings.items():
                module.set_initializer(f"{w}_quantized", rounding.soft_integers())
            with module.output_hooks(qdrop_hooks):
                out = module(inputs)
            rec = _channel_error(out[:batch], y_fp[index])
            loss = rec
            pd = None
            if use_pd:
                z_q = tail(out[batch:]) if tail is not None else out[batch:]
                pd = _pd_loss(z_q, self.z_fp[index], recon.temperature)
                loss = loss + recon.pd_weight * pd
            regularizer = None
            if step >= warm and roundings:
                progress = (step - warm) / max(1, recon.iterations - warm)
                beta = recon.beta_start + (recon.beta_end - recon.beta_start) * progress  # linear, as AdaRound
                regularizer = sum(r.regularizer(beta) for r in roundings.values())
                loss = loss + recon.round_weight * regularizer
            if not torch.isfinite(loss):
                raise ReconstructionError(f"{unit.label}: the loss became {loss.item()} at iteration {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            if scale_optimizer:
                scale_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scale_optimizer:
                scale_optimizer.step()
                scale_schedule.step()
                with torch.no_grad():
                    for s in scales.values():
                        s.clamp_(min=1e-8)
            if step % 25 == 0 or step == recon.iterations - 1:
                postfix = {"rec": f"{rec.item():.4g}"}
                if pd is not None:
                    postfix["pd"] = f"{pd.item():.4g}"
                if regularizer is not None:
                    postfix["round"] = f"{regularizer.item():.4g}"
                bar.set_postfix(postfix)
        bar.close()

        for w, rounding in roundings.items():
            self.integers[w] = rounding.hard_integers()
        for root, scale in scales.items():
            old = self.act[root]
            self.act[root] = QParams(np.asarray(scale.detach().numpy(), np.float32).reshape(old.scale.shape),
                                     old.zero_point, old.qtype, old.axis, old.qmin)
        after = measure(hard=True)  # leaves the hard integers in `module`, beside the learned scales
        # Through the model as materialized now (biases re-derived from the learned scales, as the next unit sees it).
        self._qdq = self.qdq_model()
        if unit.input != self.image_input and self.plan.root(unit.input) in scales:
            # The unit learned the step of its own input (shared through a Slice or MaxPool): the values it
            # started from are stale, so the next unit's come through the whole prefix, as the model now stands.
            next_q = _run(OnnxModule(extract(self._qdq, [self.image_input], [q_out])), self.images)
        else:
            next_q = _run(OnnxModule(extract(self._qdq, [q_in], [q_out])), x_q)
        next_fp = y_fp if x_fp is x_fp_uncorrected else _run(fp_unit, x_fp_uncorrected)
        self._next_inputs = (unit.output, next_fp, next_q)
        return {"unit": unit.index, "kind": unit.kind, "input": unit.input, "output": unit.output,
                "weights": list(unit.weights), "pd_term": use_pd,
                "distribution_correction": bool(recon.distribution_correction and bn_outputs),
                "learned_scales": sorted(scales), "loss_before": before, "loss_after": after,
                "seconds": round(time.perf_counter() - started, 2)}

    # ----------------------------------------------------------------------------------- checkpoints

    def progress_after(self, units: list[dict]) -> Progress:
        scales = {root: params.scale for root, params in self.act.items()}
        return Progress(scales, dict(self.integers), list(units), self.generator.get_state(),
                        torch.get_rng_state())

    def restore(self, progress: Progress) -> None:
        for root, scale in progress.scales.items():
            old = self.act[root]
            self.act[root] = QParams(scale.astype(np.float32).reshape(old.scale.shape), old.zero_point, old.qtype,
                                     old.axis, old.qmin)
        self.integers = dict(progress.integers)
        self._qdq, self._next_inputs = None, None
        self.generator.set_state(progress.generator_state)
        torch.set_rng_state(progress.torch_rng_state)

    # ----------------------------------------------------------------------------------- helpers

    def _float_tensors(self, unit: Unit) -> set[str]:
        names = set(unit.nodes)
        return {out for node in self.float_model.graph.node if node.name in names for out in node.output}

    def _adaround(self, weight: str) -> AdaRound:
        params = self.weights[weight]
        return AdaRound(self.float_weights[weight], params.scale, params.axis or 0, params.low, params.qtype.qmax)

    def _scale_parameters(self, module: OnnxModule) -> dict[str, torch.nn.Parameter]:
        """Activation roots whose scale initializer the unit's QuantizeLinear nodes read, as trainable parameters."""
        scales = {}
        for root in self.act:
            name = f"{root}_scale"
            if name in module.initializer_names and not self.plan.activations[root].constant:
                parameter = module.initializer(name)
                if isinstance(parameter, torch.nn.Parameter):
                    parameter.requires_grad_(True)
                    scales[root] = parameter
        return scales

    def _qdrop_hook(self):
        prob, generator = self.recon.qdrop_prob, self.generator

        def hook(inputs: list[torch.Tensor], quantized: torch.Tensor) -> torch.Tensor:
            x, scale = inputs[0], inputs[1]  # activation quantizers only: weights are DQ-only initializers
            zero = inputs[2].to(x.dtype) if len(inputs) > 2 and inputs[2] is not None else 0.0
            keep = torch.rand(quantized.shape, generator=generator) < prob
            return torch.where(keep, quantized, x / scale + zero)  # DequantizeLinear maps x/s + z back to x

        return hook


def reconstruct(float_model: onnx.ModelProto, plan: QuantPlan, act: dict[str, QParams], weights: dict[str, QParams],
                calib: np.ndarray, recon: ReconConfig, bn: dict[str, BnTarget] | None = None,
                progress: bool = True, resume_point: ResumePoint | None = None) -> ReconResult:
    """Learn weight rounding (and, for pdquant, activation step sizes) unit by unit; see the module docstring."""
    started = time.perf_counter()
    if len(calib) < recon.batch_size:
        raise ReconstructionError(f"the calibration set has {len(calib)} images, fewer than the reconstruction batch "
                                  f"size {recon.batch_size}: give more images or a smaller --recon-batch-size")
    recon = recon.resolved(min((w.bits for w in plan.weights.values()), default=8))
    torch.manual_seed(recon.seed)
    trainer = _Trainer(float_model, plan, act, weights, calib, recon, bn or {}, progress)
    partition = find_units(float_model, plan, trainer.image_input, recon.max_unit_layers)
    if resume_point is not None:  # the partition is part of what a checkpoint must match
        resume_point = ResumePoint(resume_point.path, {**resume_point.identity, "units": [u.label for u in partition.units]},
                                   resume_point.resume)
    units: list[dict] = []
    if resume_point is not None and resume_point.resume:
        saved = load_progress(resume_point)
        trainer.restore(saved)
        units = saved.units
    bar = tqdm(partition.units[len(units):], desc=f"{recon.method} units", unit="unit", file=sys.stderr,
               disable=not progress, total=len(partition.units), initial=len(units))
    for unit in bar:
        try:
            units.append(trainer.unit(unit, bar_position=1))
        except ReconstructionError as err:
            raise ReconstructionError(_divergence_message(err, units, resume_point)) from err
        if resume_point is not None:
            save_progress(resume_point, trainer.progress_after(units))
        bar.set_postfix(rec=f"{units[-1]['loss_before']['rec']:.3g}->{units[-1]['loss_after']['rec']:.3g}")
    return ReconResult(recon, trainer.act, trainer.weights, trainer.integers, units, partition.notes,
                       round(time.perf_counter() - started, 2))


def _divergence_message(err: ReconstructionError, units: list[dict], resume_point: ResumePoint | None) -> str:
    fix = ("check the calibration set for extreme values, or keep the calibrator's step sizes (--no-learn-scales) "
           "or use fewer iterations (--recon-iterations)")
    if resume_point is None or not units:
        return f"{err}; no model was written: {fix}"
    return (f"{err}; no model was written. The {len(units)} finished unit(s) are kept in {resume_point.path}: "
            f"{fix}, and add --resume to continue from there")
