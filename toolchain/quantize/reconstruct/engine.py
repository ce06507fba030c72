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
  (recon.qdrop);
- the PD term runs the unit's quantized output through the FP rest of the network (cut at the unit).
It returns new parameters (same zero points) and hard-rounded integers; a unit whose objective, measured
hard-rounded on the same samples, ends above where it started keeps its start instead. With a `resume_point`
the state is checkpointed after every finished unit and a resumed run skips those units;
a non-finite loss stops with ReconstructionError naming the unit (and the checkpoint that keeps the
finished ones); the caller then writes no model.

Scale: the per-sample tensors (unit inputs, FP targets, logits) live in a SampleCache, in RAM within
`execution.cache_budget` and in spill files beyond it (recon.cache: the same values either way); full
passes over the calibration set run in batches of bounded size. The modules run on `execution`'s
device (the cached tensors stay on the CPU, one batch at a time moves). Under torch.distributed each
rank holds a shard of the calibration set and the gradients are all-reduced (recon.shard).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from tqdm import tqdm

from toolchain.errors import ToolchainError
from toolchain.core.execution import Execution
from toolchain.executor import OnnxModule
from toolchain.core.acceleration import Acceleration, to_channels_last
from toolchain.core.memory import release_freed_memory, reuse_freed_memory
from toolchain.onnxio import qdq_names
from toolchain.quantize.annotate.placement import QuantPlan
from toolchain.quantize.materialize.qdq import materialize
from toolchain.quantize.qparams import QParams
from toolchain.quantize.reconstruct.adaround import AdaRound
from toolchain.quantize.reconstruct.cache import SampleCache, SampleStore
from toolchain.quantize.reconstruct.config import ReconConfig
from toolchain.quantize.reconstruct.correction import BnTarget, correct_inputs
from toolchain.quantize.reconstruct.estimate import announce_remaining, unit_costs
from toolchain.quantize.reconstruct.losses import channel_error, objective, pd_loss
from toolchain.quantize.reconstruct.qdrop import keep_mask, qdrop_hook, select
from toolchain.quantize.reconstruct.resume import Progress, ResumePoint, load_progress, save_progress
from toolchain.quantize.reconstruct.shard import Shard
from toolchain.quantize.reconstruct.subgraph import extract
from toolchain.quantize.reconstruct.units import Unit, find_units

EVAL_SAMPLES = 64  # samples on which each unit's loss is measured before and after
PASS_BYTES = 64 << 20  # input bytes per batch of a full pass over the calibration set
PASS_ROWS = 256  # at most this many samples per batch (what small inputs, e.g. 32x32, always used)


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
    cache: dict = field(default_factory=dict)  # budget, peak bytes in RAM, bytes spilled to disk
    resumed_units: int = 0  # units taken from a checkpoint (0: the run started afresh)


class _Trainer:
    def __init__(self, float_model: onnx.ModelProto, plan: QuantPlan, act: dict[str, QParams],
                 weights: dict[str, QParams], calib: np.ndarray, recon: ReconConfig, bn: dict[str, BnTarget],
                 progress: bool, shard: Shard, cache: SampleCache, device: torch.device,
                 start_integers: dict[str, np.ndarray] | None = None,
                 acceleration: Acceleration | None = None) -> None:
        self.float_model, self.plan, self.recon, self.bn = float_model, plan, recon, bn
        self.start_integers = start_integers or {}
        self.shard, self.cache, self.device = shard, cache, device
        self.acceleration = acceleration or Acceleration()
        self.progress = progress and shard.rank == 0
        self.act, self.weights = dict(act), dict(weights)
        self.integers: dict[str, np.ndarray] = {}
        local = np.ascontiguousarray(calib[shard.start:shard.stop], np.float32)
        self.images = SampleStore.wrapping(torch.from_numpy(local))
        self.image_input = next(i.name for i in float_model.graph.input
                                if i.name not in {t.name for t in float_model.graph.initializer})
        self.output = float_model.graph.output[0].name
        self.float_weights = {w: numpy_helper.to_array(i) for i in float_model.graph.initializer
                              for w in [i.name] if w in plan.weights}
        self.generator = torch.Generator().manual_seed(recon.seed)
        self.z_fp = self._pass(self._module(extract(float_model, [self.image_input], [self.output])), self.images)
        self._next_inputs: tuple[str, SampleStore, SampleStore] | None = None  # (tensor, FP values, quantized values)
        self._qdq: onnx.ModelProto | None = None  # the QDQ model as the last finished unit left it
        self._hook_rows: torch.Tensor | None = None  # this rank's rows of the global step batch (None: all of it)
        self._hook_batch = 0  # samples in the global step batch (the PD half included)

    # -------------------------------------------------------------------------------- graph plumbing

    def qdq_model(self) -> onnx.ModelProto:
        """The QDQ graph as it stands: native low-bit types, learned integers of finished units."""
        return materialize(self.float_model, self.plan, self.act, self.weights, "native", self.integers)

    def q_name(self, tensor: str) -> str:
        """The QDQ graph's name of the quantized (dequantized) value of float tensor `tensor`."""
        if tensor == self.image_input:
            return tensor  # the unit that reads the image holds the input's Q/DQ
        return qdq_names.value_in_qdq(tensor, (self.output,))

    def _module(self, model: onnx.ModelProto, trainable: bool = False) -> OnnxModule:
        module = OnnxModule(model, trainable=trainable).to(self.device)
        return to_channels_last(module) if self.acceleration.channels_last else module

    def _pass(self, module: OnnxModule, source: SampleStore) -> SampleStore:
        """`module` over every sample of `source`, in batches of at most PASS_BYTES of input, into a new store."""
        rows = max(1, min(PASS_ROWS, PASS_BYTES // max(1, 4 * int(np.prod(source.sample_shape)))))
        out = None
        with torch.no_grad():
            for start in range(0, len(source), rows):
                y = module(source.read(slice(start, start + rows)).to(self.device))
                y = y[0] if isinstance(y, tuple) else y
                if out is None:
                    out = self.cache.store(len(source), tuple(y.shape[1:]))
                out.write(start, y)
        return out

    def _rows(self, store: SampleStore, rows: torch.Tensor) -> torch.Tensor:
        return store.read(rows).to(self.device)

    # ------------------------------------------------------------------------------------ one unit

    def unit(self, unit: Unit, bar_position: int) -> dict:
        recon, shard, started = self.recon, self.shard, time.perf_counter()
        release_freed_memory(self.acceleration.reuse_memory)  # the previous unit's blocks: other sizes
        qdq = self._qdq if self._qdq is not None else self.qdq_model()  # nothing changed since the previous unit ended
        q_in, q_out = self.q_name(unit.input), self.q_name(unit.output)
        if unit.input == self.image_input:
            x_q = x_fp = self.images
        elif self._next_inputs is not None and self._next_inputs[0] == unit.input:
            # The previous unit ended where this one starts (consecutive cuts): its outputs, computed once,
            # instead of the whole prefix again (which made reconstruction quadratic in the number of units).
            _, x_fp, x_q = self._next_inputs
        else:
            self._drop_next_inputs()
            x_q = self._pass(self._module(extract(qdq, [self.image_input], [q_in])), self.images)
            x_fp = self._pass(self._module(extract(self.float_model, [self.image_input], [unit.input])), self.images)
        self._next_inputs = None
        x_fp_uncorrected = x_fp
        bn_outputs = [t for t in self.bn if t in self._float_tensors(unit)]
        fp_unit = self._module(extract(self.float_model, [unit.input], [unit.output, *bn_outputs]))
        if recon.distribution_correction and bn_outputs:
            targets = [self.bn[t].to(self.device) for t in bn_outputs]
            corrected = self.cache.store(len(x_fp), x_fp.sample_shape)
            for i in range(0, len(x_fp), recon.dc_batch_size):
                corrected.write(i, correct_inputs(fp_unit, x_fp.read(slice(i, i + recon.dc_batch_size)).to(self.device),
                                                  targets, recon.dc_steps, recon.dc_lr, recon.dc_lambda,
                                                  self.acceleration.compile))
            x_fp = corrected
            release_freed_memory(self.acceleration.reuse_memory)  # DC's full-set tensors: not the loop's sizes
        y_fp = self._pass(fp_unit, x_fp)
        use_pd = recon.prediction_difference and unit.decides_prediction
        tail = None
        if use_pd and unit.output != self.output:
            tail = self._module(extract(self.float_model, [unit.output], [self.output]))
            tail.requires_grad_(False)

        module = self._module(extract(qdq, [q_in], [q_out]), trainable=True)
        module.requires_grad_(False)
        roundings = {w: self._adaround(w) for w in unit.weights}
        scales = self._scale_parameters(module) if recon.learn_scales else {}
        quantizers = [name for op, name in module.runtime_nodes if op == "QuantizeLinear"]

        def measure(hard: bool) -> dict:
            _, rows = shard.local(torch.arange(min(EVAL_SAMPLES, shard.total)))
            with torch.no_grad():
                for w, rounding in roundings.items():
                    ints = rounding.hard_integers() if hard else self._starting_integers(w)
                    module.set_initializer(qdq_names.quantized(w), torch.from_numpy(ints.astype(np.float32)).to(self.device))
                sums = torch.zeros(3, dtype=torch.float64)
                # In chunks of at most PASS_BYTES of unit output, so that at 224x224 the PD tail never holds the
                # activations of all 64 samples at once (a 32x32 unit's samples still fit one chunk, as before).
                chunk = max(1, PASS_BYTES // max(1, 4 * int(np.prod(y_fp.sample_shape))))
                for part in rows.split(chunk):
                    out = module(self._rows(x_q, part))
                    sums[0] += float(channel_error(out, self._rows(y_fp, part))) * len(part)
                    if use_pd:
                        z_q = tail(out) if tail is not None else out
                        sums[1] += float(pd_loss(z_q, self._rows(self.z_fp, part), recon.temperature)) * len(part)
                    sums[2] += len(part)
                sums = shard.all_reduce_sum(sums)
            terms = {"rec": float(sums[0] / sums[2])}
            if use_pd:
                terms["pd"] = float(sums[1] / sums[2])
            return terms

        before = measure(hard=False)
        trained = [r.alpha for r in roundings.values()]
        optimizer = torch.optim.Adam([{"params": trained, "lr": recon.round_lr}])
        scale_optimizer = torch.optim.Adam(list(scales.values()), lr=recon.scale_lr) if scales else None
        scale_schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(scale_optimizer, T_max=recon.iterations, eta_min=0.0)
                          if scale_optimizer else None)
        n, batch = shard.total, min(recon.batch_size, shard.total)
        warm = int(recon.warmup * recon.iterations)
        bar = tqdm(range(recon.iterations), desc=f"{unit.label[:48]}", unit="it", file=sys.stderr,
                   disable=not self.progress, leave=False, position=bar_position)
        hook = qdrop_hook(recon.qdrop_prob, self.generator, lambda: (self._hook_rows, self._hook_batch))
        qdrop_hooks = {q: hook for q in quantizers} if recon.qdrop else {}
        for step in bar:
            index = torch.randint(0, n, (batch,), generator=self.generator)  # the global batch, the same on every rank
            positions, rows = shard.local(index)
            share = len(rows)
            if share == 0:  # none of it here: one own sample at weight 0 keeps the random draws in step
                positions, rows = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
            xq = self._rows(x_q, rows)
            inputs = xq
            if recon.qdrop:
                keep = keep_mask((batch, *x_q.sample_shape), 0.5, self.generator)
                keep = keep if shard.is_whole else keep[positions]
                inputs = select(keep, xq, self._rows(x_fp, rows))
            if use_pd:
                inputs = torch.cat([inputs, xq])
            if not shard.is_whole:
                self._hook_rows = torch.cat([positions, positions + batch]) if use_pd else positions
                self._hook_batch = 2 * batch if use_pd else batch
            for w, rounding in roundings.items():
                module.set_initializer(qdq_names.quantized(w), rounding.soft_integers())
            with module.output_hooks(qdrop_hooks):
                out = module(inputs)
            local = len(rows)
            rec = channel_error(out[:local], self._rows(y_fp, rows))
            loss = shard.scaled(rec, share, batch)
            pd = None
            if use_pd:
                z_q = tail(out[local:]) if tail is not None else out[local:]
                pd = pd_loss(z_q, self._rows(self.z_fp, rows), recon.temperature)
                loss = loss + recon.pd_weight * shard.scaled(pd, share, batch)
            regularizer = None
            if step >= warm and roundings:
                progress = (step - warm) / max(1, recon.iterations - warm)
                beta = recon.beta_start + (recon.beta_end - recon.beta_start) * progress  # linear, as AdaRound
                regularizer = sum(r.regularizer(beta) for r in roundings.values())
                if shard.rank == 0:  # once in the all-reduced sum
                    loss = loss + recon.round_weight * regularizer
            if shard.is_whole and not torch.isfinite(loss):
                raise ReconstructionError(f"{unit.label}: the loss became {loss.item()} at iteration {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            if scale_optimizer:
                scale_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not shard.is_whole:
                total = shard.all_reduce_gradients([*trained, *scales.values()], loss.detach())
                if not torch.isfinite(total):
                    raise ReconstructionError(f"{unit.label}: the loss became {total.item()} at iteration {step + 1}")
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
        self._hook_rows = None

        start_act = {root: self.act[root] for root in scales}
        for w, rounding in roundings.items():
            self.integers[w] = rounding.hard_integers()
        for root, scale in scales.items():
            old = self.act[root]
            self.act[root] = QParams(np.asarray(scale.detach().cpu().numpy(), np.float32).reshape(old.scale.shape),
                                     old.zero_point, old.qtype, old.axis, old.qmin)
        after = measure(hard=True)  # leaves the hard integers in `module`, beside the learned scales
        kept_state = "learned"
        if objective(after, recon.pd_weight) > objective(before, recon.pd_weight):
            # A short budget can end with roundings still between their grid points, and hardening them then
            # costs more than training gained: the unit keeps where it started, on the same samples' measure.
            self.integers.update({w: self._starting_integers(w) for w in roundings})
            self.act.update(start_act)
            kept_state = "start"
        # Through the model as materialized now (biases re-derived from the learned scales, as the next unit sees it).
        self._qdq = self.qdq_model()
        if unit.input != self.image_input and self.plan.root(unit.input) in scales:
            # The unit learned the step of its own input (shared through a Slice or MaxPool): the values it
            # started from are stale, so the next unit's come through the whole prefix, as the model now stands.
            next_q = self._pass(self._module(extract(self._qdq, [self.image_input], [q_out])), self.images)
        else:
            next_q = self._pass(self._module(extract(self._qdq, [q_in], [q_out])), x_q)
        next_fp = y_fp if x_fp is x_fp_uncorrected else self._pass(fp_unit, x_fp_uncorrected)
        self._next_inputs = (unit.output, next_fp, next_q)
        kept = {id(next_fp), id(next_q), id(self.images)}
        for store in {id(s): s for s in (x_q, x_fp, x_fp_uncorrected, y_fp)}.values():
            if id(store) not in kept:
                store.release()
        return {"unit": unit.index, "kind": unit.kind, "input": unit.input, "output": unit.output,
                "weights": list(unit.weights), "pd_term": use_pd,
                "distribution_correction": bool(recon.distribution_correction and bn_outputs),
                "learned_scales": sorted(scales), "loss_before": before, "loss_after": after, "kept": kept_state,
                "seconds": round(time.perf_counter() - started, 2)}

    def _drop_next_inputs(self) -> None:
        if self._next_inputs is not None:
            for store in self._next_inputs[1:]:
                if store is not self.images:
                    store.release()
            self._next_inputs = None

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
        self._drop_next_inputs()
        self._qdq = None
        self.generator.set_state(progress.generator_state)
        torch.set_rng_state(progress.torch_rng_state)

    # ----------------------------------------------------------------------------------- helpers

    def _float_tensors(self, unit: Unit) -> set[str]:
        names = set(unit.nodes)
        return {out for node in self.float_model.graph.node if node.name in names for out in node.output}

    def _adaround(self, weight: str) -> AdaRound:
        params = self.weights[weight]
        return AdaRound(self.float_weights[weight], params.scale, params.axis or 0, params.low,
                        params.qtype.qmax, start=self.start_integers.get(weight)).to(self.device)

    def _starting_integers(self, weight: str) -> np.ndarray:
        """What the weight's integers are before its unit learns: the given start (GPTQ), else nearest rounding."""
        given = self.start_integers.get(weight)
        return given if given is not None else self.weights[weight].quantize(self.float_weights[weight])

    def _scale_parameters(self, module: OnnxModule) -> dict[str, torch.nn.Parameter]:
        """Activation roots whose scale initializer the unit's QuantizeLinear nodes read, as trainable parameters."""
        scales = {}
        for root in self.act:
            name = qdq_names.scale(root)
            if name in module.initializer_names and not self.plan.activations[root].constant:
                parameter = module.initializer(name)
                if isinstance(parameter, torch.nn.Parameter):
                    parameter.requires_grad_(True)
                    scales[root] = parameter
        return scales


def reconstruct(float_model: onnx.ModelProto, plan: QuantPlan, act: dict[str, QParams], weights: dict[str, QParams],
                calib: np.ndarray, recon: ReconConfig, bn: dict[str, BnTarget] | None = None,
                progress: bool = True, resume_point: ResumePoint | None = None,
                execution: Execution | None = None, distributed=None,
                start_integers: dict[str, np.ndarray] | None = None) -> ReconResult:
    """Learn weight rounding (and, for pdquant, activation step sizes) unit by unit; see the module docstring.

    `start_integers` (by weight tensor, e.g. quant.gptq's): AdaRound starts from these instead of the float
    weights (recon.adaround); weights not in it start as usual.

    `distributed` (a datagen.distributed.Distributed, e.g. from distributed_session()): this process
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
        trainer = _Trainer(float_model, plan, act, weights, calib, recon, bn or {}, progress, shard, cache,
                           execution.torch_device(), start_integers, acceleration)
        with reuse_freed_memory(acceleration.reuse_memory):
            result = _reconstruct_units(trainer, recon, resume_point, progress and shard.rank == 0)
        result.cache = {"budget_bytes": cache.budget, "peak_ram_bytes": cache.peak_in_ram,
                        "spilled_bytes": cache.spilled_bytes, "device": str(trainer.device),
                        "processes": 1 if distributed is None else distributed.world_size,
                        "acceleration": acceleration.describe()}
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def _reconstruct_units(trainer: _Trainer, recon: ReconConfig, resume_point: ResumePoint | None,
                       progress: bool) -> ReconResult:
    float_model, plan = trainer.float_model, trainer.plan
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
        bar.set_postfix(rec=f"{last['loss_before']['rec']:.3g}->{last['loss_after']['rec']:.3g}"
                            + (" (kept its start)" if last["kept"] == "start" else ""))
    return ReconResult(recon, trainer.act, trainer.weights, trainer.integers, units, partition.notes, resumed_units=first)


def _divergence_message(err: ReconstructionError, units: list[dict], resume_point: ResumePoint | None) -> str:
    fix = ("check the calibration set for extreme values, or keep the calibrator's step sizes (--no-learn-scales) "
           "or use fewer iterations (--recon-iterations)")
    if resume_point is None or not units:
        return f"{err}; no model was written: {fix}"
    return (f"{err}; no model was written. The {len(units)} finished unit(s) are kept in {resume_point.path}: "
            f"{fix}, and add --resume to continue from there")
