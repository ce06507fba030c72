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
- QDrop is a hook on the unit's QuantizeLinear nodes letting a random half of the elements through
  (reconstruct.qdrop);
- the PD term runs the unit's quantized output through the FP rest of the network (cut at the unit).
It returns new parameters (same zero points) and hard-rounded integers; a unit whose objective, measured
hard-rounded on the same samples, ends above where it started keeps its start instead. With a `resume_point`
the state is checkpointed after every finished unit and a resumed run skips those units;
a non-finite loss stops with ReconstructionError naming the unit (and the checkpoint that keeps the
finished ones); the caller then writes no model.

Scale: the per-sample tensors (unit inputs, FP targets, logits) live in a SampleCache, in RAM within
`execution.cache_budget` and in spill files beyond it (reconstruct.cache: the same values either way); full
passes over the calibration set run in batches of bounded size. The modules run on `execution`'s
device (the cached tensors stay on the CPU, one batch at a time moves). Under torch.distributed each
rank holds a shard of the calibration set and the gradients are all-reduced (reconstruct.shard).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from tqdm import tqdm

from toolchain.core.execution import Execution
from toolchain.core.memory import reuse_freed_memory
from toolchain.quantize.annotate.placement import QuantPlan
from toolchain.quantize.qparams import QParams
from toolchain.quantize.reconstruct.cache import SampleCache
from toolchain.quantize.reconstruct.config import ReconConfig
from toolchain.quantize.reconstruct.correction import BnTarget
from toolchain.quantize.reconstruct.estimate import announce_remaining, unit_costs
from toolchain.quantize.reconstruct.resume import ResumePoint, load_progress, save_progress
from toolchain.quantize.reconstruct.shard import Shard
from toolchain.quantize.reconstruct.trainer import ReconstructionError, UnitTrainer
from toolchain.quantize.reconstruct.units import find_units
from toolchain.quantize.report_sections import UnitReport

__all__ = ["ReconResult", "ReconstructionError", "reconstruct"]

@dataclass
class ReconResult:
    config: ReconConfig  # what ran: model-dependent defaults (pd_weight) resolved
    activations: dict[str, QParams]
    weights: dict[str, QParams]
    weight_integers: dict[str, np.ndarray]
    units: list[UnitReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cache: dict = field(default_factory=dict)  # budget, peak bytes in RAM, bytes spilled to disk
    resumed_units: int = 0  # units taken from a checkpoint (0: the run started afresh)


def reconstruct(float_model: onnx.ModelProto, plan: QuantPlan, act: dict[str, QParams], weights: dict[str, QParams],
                calib: np.ndarray, recon: ReconConfig, bn: dict[str, BnTarget] | None = None,
                progress: bool = True, resume_point: ResumePoint | None = None,
                execution: Execution | None = None, distributed=None,
                start_integers: dict[str, np.ndarray] | None = None) -> ReconResult:
    """Learn weight rounding (and, for pdquant, activation step sizes) unit by unit; see the module docstring.

    `start_integers` (by weight tensor, e.g. calibrate.gptq's): AdaRound starts from these instead of the float
    weights (reconstruct.adaround); weights not in it start as usual.

    `distributed` (a core.distributed.Distributed, e.g. from distributed_session()): this process
    reconstructs with its shard of `calib` (every rank passes the whole set); every rank returns the same
    result, and only rank 0 writes checkpoints.
    """
    started = time.perf_counter()
    if len(calib) < recon.batch_size:
        raise ReconstructionError(f"the calibration set has {len(calib)} images, fewer than the reconstruction batch "
                                  f"size {recon.batch_size}: give more images or a smaller --recon-batch-size")
    recon = recon.resolved(min((w.bits for w in plan.weights.values()), default=8))
    execution = execution or Execution()
    torch.manual_seed(recon.seed)
    shard = Shard.of(len(calib), distributed, align=recon.dc_batch_size)
    with SampleCache(execution.cache_budget, execution.spill_dir) as cache:
        acceleration = execution.acceleration(tuple(calib.shape[2:]))
        trainer = UnitTrainer(float_model, plan, act, weights, calib, recon, bn or {}, progress, shard, cache,
                           execution.torch_device(), start_integers, acceleration)
        with reuse_freed_memory(acceleration.reuse_memory):
            result = _reconstruct_units(trainer, recon, resume_point, progress and shard.rank == 0)
        result.cache = {"budget_bytes": cache.budget, "peak_ram_bytes": cache.peak_in_ram,
                        "spilled_bytes": cache.spilled_bytes, "device": str(trainer.device),
                        "processes": 1 if distributed is None else distributed.world_size,
                        "acceleration": acceleration.describe()}
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def _reconstruct_units(trainer: UnitTrainer, recon: ReconConfig, resume_point: ResumePoint | None,
                       progress: bool) -> ReconResult:
    float_model, plan = trainer.float_model, trainer.plan
    partition = find_units(float_model, plan, trainer.image_input, recon.max_unit_layers)
    if resume_point is not None:  # the partition is part of what a checkpoint must match
        resume_point = ResumePoint(resume_point.path, {**resume_point.identity, "units": [u.label for u in partition.units]},
                                   resume_point.resume)
    units: list[UnitReport] = []
    if resume_point is not None and resume_point.resume:
        saved = load_progress(resume_point)
        trainer.restore(saved)
        units = saved.units
    bar = tqdm(partition.units[len(units):], desc=f"{recon.method} units", unit="unit", file=sys.stderr,
               disable=not progress, total=len(partition.units), initial=len(units))
    costs = unit_costs(float_model, partition.units, recon.prediction_difference) if progress else []
    first, started = len(units), time.perf_counter()
    for unit in bar:
        try:
            units.append(trainer.unit(unit, bar_position=1))
        except ReconstructionError as err:
            raise ReconstructionError(_divergence_message(err, units, resume_point)) from err
        if progress and len(units) == first + 1:
            announce_remaining(bar, recon.method, costs, first, time.perf_counter() - started)
        if resume_point is not None and trainer.shard.rank == 0:  # every rank holds the same state
            save_progress(resume_point, trainer.progress_after(units))
        last = units[-1]
        bar.set_postfix(rec=f"{last.loss_before.rec:.3g}->{last.loss_after.rec:.3g}"
                            + (" (kept its start)" if last.kept == "start" else ""))
    return ReconResult(recon, trainer.act, trainer.weights, trainer.integers, units, partition.notes, resumed_units=first)


def _divergence_message(err: ReconstructionError, units: list[UnitReport], resume_point: ResumePoint | None) -> str:
    fix = ("check the calibration set for extreme values, or keep the calibrator's step sizes (--no-learn-scales) "
           "or use fewer iterations (--recon-iterations)")
    if resume_point is None or not units:
        return f"{err}; no model was written: {fix}"
    return (f"{err}; no model was written. The {len(units)} finished unit(s) are kept in {resume_point.path}: "
            f"{fix}, and add --resume to continue from there")
