"""One reconstruction unit trained on the QDQ graph as it stands (see engine.py for the contract).

Usage:
    trainer = UnitTrainer(float_model, plan, act, weights, calib, recon, bn, progress, shard, cache, device)
    entry = trainer.unit(unit, bar_position=1)    # the unit's report entry; trainer.act / .integers move on
    trainer.qdq_model()                           # the QDQ graph with every finished unit's parameters

A unit runs as named steps: _prepare (its inputs X_q / X_fp, distribution correction, FP targets, the PD tail,
the trainable cut with AdaRound and scale parameters), _measure (loss before), _train (Adam over
recon.iterations steps of _step_loss), _keep_or_revert (hard rounding, the start kept when it was better),
_advance (the next unit's inputs through the model as it will be written).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from tqdm import tqdm

from toolchain.core.acceleration import Acceleration, to_channels_last
from toolchain.core.memory import release_freed_memory
from toolchain.errors import ToolchainError
from toolchain.executor import OnnxModule
from toolchain.onnxio import qdq_names
from toolchain.quantize.annotate.placement import QuantPlan
from toolchain.quantize.materialize.qdq import materialize
from toolchain.quantize.qparams import QParams
from toolchain.quantize.reconstruct.adaround import AdaRound
from toolchain.quantize.reconstruct.cache import SampleCache, SampleStore
from toolchain.quantize.reconstruct.config import ReconConfig
from toolchain.quantize.reconstruct.correction import BnTarget, correct_inputs
from toolchain.quantize.reconstruct.losses import channel_error, pd_loss
from toolchain.quantize.reconstruct.qdrop import keep_mask, qdrop_hook, select
from toolchain.quantize.reconstruct.resume import Progress
from toolchain.quantize.reconstruct.shard import Shard
from toolchain.quantize.reconstruct.subgraph import extract
from toolchain.quantize.reconstruct.units import Unit
from toolchain.quantize.report_sections import LossTerms, UnitReport

EVAL_SAMPLES = 64  # samples on which each unit's loss is measured before and after
PASS_BYTES = 64 << 20  # input bytes per batch of a full pass over the calibration set
PASS_ROWS = 256  # at most this many samples per batch (what small inputs, e.g. 32x32, always used)


class ReconstructionError(ToolchainError):
    """Reconstruction cannot go on (diverged, or the calibration set does not fit the settings)."""


@dataclass
class _UnitWork:
    """One unit's working set while it trains (mutable: the stores are released as the unit finishes)."""

    unit: Unit
    q_in: str
    q_out: str
    x_q: SampleStore
    x_fp: SampleStore  # after distribution correction when it ran
    x_fp_uncorrected: SampleStore
    y_fp: SampleStore
    fp_unit: OnnxModule
    tail: OnnxModule | None  # the FP rest of the network, for the PD term
    use_pd: bool
    corrected: bool  # distribution correction ran
    module: OnnxModule  # the trainable cut of the QDQ graph
    roundings: dict[str, AdaRound]
    scales: dict[str, torch.nn.Parameter]
    quantizers: list[str]


class UnitTrainer:
    """The state of one reconstruction (parameters so far, sample stores, RNG) and how one unit is trained."""

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
        assert out is not None, "the calibration set holds at least one sample"
        return out

    def _rows(self, store: SampleStore, rows: torch.Tensor) -> torch.Tensor:
        return store.read(rows).to(self.device)

    # ------------------------------------------------------------------------------------ one unit

    def unit(self, unit: Unit, bar_position: int) -> UnitReport:
        """Train one unit: its inputs, its FP targets, the rounding (and scale) loop, keep-or-revert, the next
        unit's inputs. Returns the unit's entry of the report."""
        started = time.perf_counter()
        release_freed_memory(self.acceleration.reuse_memory)  # the previous unit's blocks: other sizes
        qdq = self._qdq if self._qdq is not None else self.qdq_model()  # nothing changed since the previous unit ended
        work = self._prepare(unit, qdq)
        before = self._measure(work, hard=False)
        self._train(work, bar_position)
        after, kept_state = self._keep_or_revert(work, before)
        self._advance(work)
        return UnitReport(unit.index, unit.kind, unit.input, unit.output, tuple(unit.weights), work.use_pd,
                          work.corrected, tuple(sorted(work.scales)), before, after, kept_state,
                          round(time.perf_counter() - started, 2))

    def _unit_inputs(self, unit: Unit, qdq: onnx.ModelProto, q_in: str) -> tuple[SampleStore, SampleStore]:
        """(X_q, X_fp): the unit's input through the quantized network as it stands, and through the FP one."""
        if unit.input == self.image_input:
            self._next_inputs = None
            return self.images, self.images
        if self._next_inputs is not None and self._next_inputs[0] == unit.input:
            # The previous unit ended where this one starts (consecutive cuts): its outputs, computed once,
            # instead of the whole prefix again (which made reconstruction quadratic in the number of units).
            _, x_fp, x_q = self._next_inputs
            self._next_inputs = None
            return x_q, x_fp
        self._drop_next_inputs()
        x_q = self._pass(self._module(extract(qdq, [self.image_input], [q_in])), self.images)
        x_fp = self._pass(self._module(extract(self.float_model, [self.image_input], [unit.input])), self.images)
        return x_q, x_fp

    def _prepare(self, unit: Unit, qdq: onnx.ModelProto) -> _UnitWork:
        """Everything the unit's loop reads: inputs, FP targets (after distribution correction), the PD tail, and
        the trainable cut of the QDQ graph with its rounding and scale parameters."""
        recon = self.recon
        q_in, q_out = self.q_name(unit.input), self.q_name(unit.output)
        x_q, x_fp = self._unit_inputs(unit, qdq, q_in)
        x_fp_uncorrected = x_fp
        bn_outputs = [t for t in self.bn if t in self._float_tensors(unit)]
        fp_unit = self._module(extract(self.float_model, [unit.input], [unit.output, *bn_outputs]))
        corrected = bool(recon.distribution_correction and bn_outputs)
        if corrected:
            targets = [self.bn[t].to(self.device) for t in bn_outputs]
            store = self.cache.store(len(x_fp), x_fp.sample_shape)
            for i in range(0, len(x_fp), recon.dc_batch_size):
                store.write(i, correct_inputs(fp_unit, x_fp.read(slice(i, i + recon.dc_batch_size)).to(self.device),
                                              targets, recon.dc_steps, recon.dc_lr, recon.dc_lambda,
                                              self.acceleration.compile))
            x_fp = store
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
        return _UnitWork(unit, q_in, q_out, x_q, x_fp, x_fp_uncorrected, y_fp, fp_unit, tail, use_pd, corrected,
                         module, roundings, scales, quantizers)

    def _measure(self, work: _UnitWork, hard: bool) -> LossTerms:
        """The unit's loss terms on the first EVAL_SAMPLES samples, with hard-rounded (or starting) integers."""
        module, shard = work.module, self.shard
        _, rows = shard.local(torch.arange(min(EVAL_SAMPLES, shard.total)))
        with torch.no_grad():
            for w, rounding in work.roundings.items():
                ints = rounding.hard_integers() if hard else self._starting_integers(w)
                module.set_initializer(qdq_names.quantized(w), torch.from_numpy(ints.astype(np.float32)).to(self.device))
            sums = torch.zeros(3, dtype=torch.float64)
            # In chunks of at most PASS_BYTES of unit output, so that at 224x224 the PD tail never holds the
            # activations of all 64 samples at once (a 32x32 unit's samples still fit one chunk, as before).
            chunk = max(1, PASS_BYTES // max(1, 4 * int(np.prod(work.y_fp.sample_shape))))
            for part in rows.split(chunk):
                out = module(self._rows(work.x_q, part))
                sums[0] += float(channel_error(out, self._rows(work.y_fp, part))) * len(part)
                if work.use_pd:
                    z_q = work.tail(out) if work.tail is not None else out
                    sums[1] += float(pd_loss(z_q, self._rows(self.z_fp, part), self.recon.temperature)) * len(part)
                sums[2] += len(part)
            sums = shard.all_reduce_sum(sums)
        return LossTerms(float(sums[0] / sums[2]), float(sums[1] / sums[2]) if work.use_pd else None)

    def _train(self, work: _UnitWork, bar_position: int) -> None:
        """The rounding (and scale) optimisation: recon.iterations steps of Adam on the unit's loss."""
        recon, shard = self.recon, self.shard
        trained = [r.alpha for r in work.roundings.values()]
        optimizer = torch.optim.Adam([{"params": trained, "lr": recon.round_lr}])
        scale_optimizer = torch.optim.Adam(list(work.scales.values()), lr=recon.scale_lr) if work.scales else None
        scale_schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(scale_optimizer, T_max=recon.iterations, eta_min=0.0)
                          if scale_optimizer else None)
        bar = tqdm(range(recon.iterations), desc=f"{work.unit.label[:48]}", unit="it", file=sys.stderr,
                   disable=not self.progress, leave=False, position=bar_position)
        hook = qdrop_hook(recon.qdrop_prob, self.generator, lambda: (self._hook_rows, self._hook_batch))
        qdrop_hooks = {q: hook for q in work.quantizers} if recon.qdrop else {}
        for step in bar:
            loss, terms = self._step_loss(work, step, qdrop_hooks)
            if shard.is_whole and not torch.isfinite(loss):
                raise ReconstructionError(f"{work.unit.label}: the loss became {loss.item()} at iteration {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            if scale_optimizer:
                scale_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not shard.is_whole:
                total = shard.all_reduce_gradients([*trained, *work.scales.values()], loss.detach())
                if not torch.isfinite(total):
                    raise ReconstructionError(f"{work.unit.label}: the loss became {total.item()} at iteration {step + 1}")
            optimizer.step()
            if scale_optimizer is not None and scale_schedule is not None:  # set together
                scale_optimizer.step()
                scale_schedule.step()
                with torch.no_grad():
                    for s in work.scales.values():
                        s.clamp_(min=1e-8)
            if step % 25 == 0 or step == recon.iterations - 1:
                bar.set_postfix({name: f"{value.item():.4g}" for name, value in terms.items() if value is not None})
        bar.close()
        self._hook_rows = None

    def _step_loss(self, work: _UnitWork, step: int, qdrop_hooks: dict) -> tuple[torch.Tensor, dict]:
        """One step's loss on a random batch (the same draws on every rank), and its terms for the progress bar."""
        recon, shard = self.recon, self.shard
        n, batch = shard.total, min(recon.batch_size, shard.total)
        index = torch.randint(0, n, (batch,), generator=self.generator)  # the global batch, the same on every rank
        positions, rows = shard.local(index)
        share = len(rows)
        if share == 0:  # none of it here: one own sample at weight 0 keeps the random draws in step
            positions, rows = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        xq = self._rows(work.x_q, rows)
        inputs = xq
        if recon.qdrop:
            keep = keep_mask((batch, *work.x_q.sample_shape), 0.5, self.generator)
            keep = keep if shard.is_whole else keep[positions]
            inputs = select(keep, xq, self._rows(work.x_fp, rows))
        if work.use_pd:
            inputs = torch.cat([inputs, xq])
        if not shard.is_whole:
            self._hook_rows = torch.cat([positions, positions + batch]) if work.use_pd else positions
            self._hook_batch = 2 * batch if work.use_pd else batch
        for w, rounding in work.roundings.items():
            work.module.set_initializer(qdq_names.quantized(w), rounding.soft_integers())
        with work.module.output_hooks(qdrop_hooks):
            out = work.module(inputs)
        local = len(rows)
        rec = channel_error(out[:local], self._rows(work.y_fp, rows))
        loss = shard.scaled(rec, share, batch)
        pd = None
        if work.use_pd:
            z_q = work.tail(out[local:]) if work.tail is not None else out[local:]
            pd = pd_loss(z_q, self._rows(self.z_fp, rows), recon.temperature)
            assert recon.pd_weight is not None, "the PD term has a weight"
            loss = loss + recon.pd_weight * shard.scaled(pd, share, batch)
        regularizer = None
        warm = int(recon.warmup * recon.iterations)
        if step >= warm and work.roundings:
            progress = (step - warm) / max(1, recon.iterations - warm)
            beta = recon.beta_start + (recon.beta_end - recon.beta_start) * progress  # linear, as AdaRound
            regularizer = sum(r.regularizer(beta) for r in work.roundings.values())
            if shard.rank == 0:  # once in the all-reduced sum
                loss = loss + recon.round_weight * regularizer
        return loss, {"rec": rec, "pd": pd, "round": regularizer}

    def _keep_or_revert(self, work: _UnitWork, before: LossTerms) -> tuple[LossTerms, str]:
        """Hard-round and take the learned scales; a unit whose objective ended above its start keeps its start."""
        start_act = {root: self.act[root] for root in work.scales}
        for w, rounding in work.roundings.items():
            self.integers[w] = rounding.hard_integers()
        for root, scale in work.scales.items():
            old = self.act[root]
            self.act[root] = QParams(np.asarray(scale.detach().cpu().numpy(), np.float32).reshape(old.scale.shape),
                                     old.zero_point, old.qtype, old.axis, old.qmin)
        after = self._measure(work, hard=True)  # leaves the hard integers in the module, beside the learned scales
        if after.objective(self.recon.pd_weight) > before.objective(self.recon.pd_weight):
            # A short budget can end with roundings still between their grid points, and hardening them then
            # costs more than training gained: the unit keeps where it started, on the same samples' measure.
            self.integers.update({w: self._starting_integers(w) for w in work.roundings})
            self.act.update(start_act)
            return after, "start"
        return after, "learned"

    def _advance(self, work: _UnitWork) -> None:
        """The next unit's inputs, through the model as materialized now (biases re-derived from the learned
        scales, as the runtime will see it), and the stores this unit no longer needs released."""
        unit = work.unit
        self._qdq = self.qdq_model()
        if unit.input != self.image_input and self.plan.root(unit.input) in work.scales:
            # The unit learned the step of its own input (shared through a Slice or MaxPool): the values it
            # started from are stale, so the next unit's come through the whole prefix, as the model now stands.
            next_q = self._pass(self._module(extract(self._qdq, [self.image_input], [work.q_out])), self.images)
        else:
            next_q = self._pass(self._module(extract(self._qdq, [work.q_in], [work.q_out])), work.x_q)
        next_fp = work.y_fp if work.x_fp is work.x_fp_uncorrected else self._pass(work.fp_unit, work.x_fp_uncorrected)
        self._next_inputs = (unit.output, next_fp, next_q)
        kept = {id(next_fp), id(next_q), id(self.images)}
        for store in {id(s): s for s in (work.x_q, work.x_fp, work.x_fp_uncorrected, work.y_fp)}.values():
            if id(store) not in kept:
                store.release()

    def _drop_next_inputs(self) -> None:
        if self._next_inputs is not None:
            for store in self._next_inputs[1:]:
                if store is not self.images:
                    store.release()
            self._next_inputs = None

    # ----------------------------------------------------------------------------------- checkpoints

    def progress_after(self, units: list[UnitReport]) -> Progress:
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
