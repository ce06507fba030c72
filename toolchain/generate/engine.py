"""The optimisation loop shared by dgh, fdda and bns: images as parameters, one optimiser per batch.

Usage:
    engine = Engine(teacher, pre, config, n=1024, seed=0)                 # + labels/classes for fdda
    engine.initialise()                                                    # or engine.load(checkpoint_state)
    engine.run(progress=True, checkpoint=path, identity=identity)          # outer iterations
    images = engine.final_images(); losses = engine.evaluate()
    Engine(..., distributed=dist)                                          # this process's block of batches

Per step on batch j (DGH, methods.md section 2.4): augment -> forward with BN-input moments -> (joint:
combine with the other batches' stored moments) -> loss -> backward to the pixels only -> optimiser
step -> plateau schedule -> clip to the valid range -> refresh batch j's stored moments without grad.
Memory beyond the images and their optimiser state: the stored moments, J x T x 2 floats (T = channels
of every BN layer plus the input pseudo-layer).

Randomness: batch j's initial images and its augmentation / noise draws come from its own generator,
seeded with (seed, j) (`batch_generator`); each outer iteration's visit order is a permutation of all J
batches from a generator seeded with `seed`. Neither depends on how many processes share the batches.

Distributed (see distributed.py): the engine owns a contiguous block of batches (`owned`); `images`,
`optimizers`, `schedules` and `generators` are aligned with it, `stored` keeps all J rows with the
others zero. Joint statistics: step position s of an outer iteration is one all-reduce on every rank
(a rank without an s-th batch joins it without stepping), so another rank's batch enters batch j's
whole-set moments as refreshed after its owner's step s - 1 of this iteration.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from toolchain.core.distributed import Distributed, shard_batches
from toolchain.core.execution import describe_duration
from toolchain.errors import ConfigError, DataError
from toolchain.generate.augment import ImagePipeline, batch_sizes
from toolchain.generate.checkpoint import save_checkpoint
from toolchain.generate.config import GenerationConfig
from toolchain.generate.losses import BatchClasses, BNObjective, ClassObjective, combine_moments, image_moments, output_loss, stored_sum
from toolchain.generate.schedule import PlateauSchedule
from toolchain.generate.teacher import Outputs, Teacher
from toolchain.onnxio.preprocessing import Preprocessing

Reduce = Callable[[torch.Tensor], torch.Tensor]
STEP_STREAM, EVALUATE_STREAM = 0, 1


def batch_generator(seed: int, j: int, stream: int = STEP_STREAM) -> torch.Generator:
    """Batch j's generator, seeded from (seed, j, stream) through numpy's SeedSequence (independent streams)."""
    state = np.random.SeedSequence([seed % 2**64, j, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class Engine:
    """State and loop of one image-optimisation run (see the module docstring)."""

    def __init__(self, teacher: Teacher, pre: Preprocessing, config: GenerationConfig, n: int, seed: int,
                 labels: torch.Tensor | None = None, classes: ClassObjective | None = None,
                 deep_start: int = 0, distributed: Distributed | None = None) -> None:
        self.teacher, self.config, self.n, self.seed = teacher, config, n, seed
        self.pipeline = ImagePipeline(config.augment, pre, teacher.acceleration.channels_last)
        self.objective = BNObjective.build(teacher, config, pre.num_channels)
        self.sizes = batch_sizes(n, config.batch_size)
        self.counts = torch.tensor(self.sizes, dtype=torch.float32)
        starts = [sum(self.sizes[:j]) for j in range(len(self.sizes))]
        self.slices = [slice(s, s + size) for s, size in zip(starts, self.sizes)]
        self.labels = labels
        self.classes = classes
        self.batch_classes = [BatchClasses.of(labels[s]) for s in self.slices] if labels is not None else None
        self.deep = tuple(range(deep_start, len(teacher.layout.channels))) if classes is not None else ()
        world, rank = (distributed.world_size, distributed.rank) if distributed is not None else (1, 0)
        self.world_size = world
        self.owned = list(shard_batches(len(self.sizes), world, rank))
        self.local = {j: i for i, j in enumerate(self.owned)}
        self.positions = -(-len(self.sizes) // world)  # step positions per outer iteration: the longest block
        self.reduce: Reduce | None = distributed.all_reduce_sum if distributed is not None and world > 1 else None
        self.last = teacher.layout.span(len(teacher.layout.channels) - 1)
        self.order = torch.Generator().manual_seed(seed)  # visit order: the same on every rank
        self.generators = [batch_generator(seed, j) for j in self.owned]
        self.images: list[torch.Tensor] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedules: list[PlateauSchedule] = []
        self.stored = torch.zeros(len(self.sizes), 2, self.objective.size)
        self.iteration = 0
        self.elapsed = 0.0  # seconds spent in outer iterations, over every session of this run
        self.initial_losses: dict[str, float] = {}
        # Mean training loss of this process's images per outer iteration (augmented batches, as optimised): the
        # run report's generation curve. Under torchrun it is this rank's share.
        self.loss_curve: list[float] = []
        self.session_steps = 0  # image-steps of the whole set (all processes) in this session
        self.session_time = 0.0

    @property
    def own_images(self) -> int:
        return sum(self.sizes[j] for j in self.owned)

    # ------------------------------------------------------------------------------------- state

    def initialise(self) -> None:
        """Gaussian images, fresh optimisers, and every batch's moments from its finalised images."""
        self._set_images([self.pipeline.initial(self.sizes[j], g) for j, g in zip(self.owned, self.generators)])
        self.initial_losses = self.evaluate(store=True)

    def _set_images(self, images: list[torch.Tensor]) -> None:
        opt = self.config.optim
        make = torch.optim.RAdam if opt.optimizer == "radam" else torch.optim.Adam
        patience = opt.resolved_patience(self.config.iterations)
        self.images = [x.requires_grad_(True) for x in images]
        self.optimizers = [make([x], lr=opt.lr) for x in self.images]
        self.schedules = [PlateauSchedule(o, patience, opt.plateau_factor, opt.plateau_threshold, opt.min_lr,
                                          opt.reset_best) for o in self.optimizers]

    def state_dict(self) -> dict[str, Any]:
        """This process's state: its batches' images, optimisers, schedules, generators and stored rows."""
        return {
            "iteration": self.iteration, "elapsed": self.elapsed, "initial_losses": self.initial_losses,
            "loss_curve": list(self.loss_curve), "owned": list(self.owned),
            "images": [x.detach().clone() for x in self.images],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedules": [s.state_dict() for s in self.schedules],
            "stored": self.stored.clone(), "order": self.order.get_state(),
            "generators": [g.get_state() for g in self.generators],
        }

    def load(self, state: dict[str, Any]) -> None:
        if list(state["owned"]) != self.owned:
            raise ConfigError(f"cannot resume: the checkpoint holds batches {list(state['owned'])} but this process "
                              f"owns {self.owned}; resume with the same number of processes")
        self._set_images([self.pipeline.stored(x.clone()) for x in state["images"]])
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
        for schedule, saved in zip(self.schedules, state["schedules"]):
            schedule.load_state_dict(saved)
        self.stored = state["stored"].clone()
        self.order.set_state(state["order"])
        for generator, saved in zip(self.generators, state["generators"]):
            generator.set_state(saved)
        self.iteration, self.elapsed = int(state["iteration"]), float(state["elapsed"])
        self.initial_losses = dict(state["initial_losses"])
        self.loss_curve = list(state.get("loss_curve", []))  # checkpoints written before the curve existed: none
        if self.reduce is not None:  # every rank must continue from the same iteration
            it = float(self.iteration)
            total, squares = (float(v) for v in self.reduce(torch.tensor([it, it * it], dtype=torch.float64)))
            if self.world_size * squares != total * total:  # equality iff all iterations are equal
                raise DataError("cannot resume: the per-rank checkpoints were written at different iterations (a process "
                                "stopped between writes); delete the .rank* checkpoints and start afresh")

    # -------------------------------------------------------------------------------------- loop

    def run(self, progress: bool = True, checkpoint: Path | None = None, identity: dict[str, Any] | None = None,
            description: str = "generate") -> None:
        """Outer iterations until config.iterations; each visits every (own) batch once, in a random order."""
        total_iterations, every = self.config.iterations, self.config.checkpoint_every
        lockstep = self.reduce is not None and self.config.joint_statistics
        bar = tqdm(total=total_iterations, initial=self.iteration, disable=not progress, file=sys.stderr,
                   desc=description, unit="it", dynamic_ncols=True)
        first = self.iteration
        try:
            while self.iteration < total_iterations:
                start = time.perf_counter()
                loss = 0.0
                order = torch.randperm(len(self.sizes), generator=self.order).tolist()
                mine = [j for j in order if j in self.local]
                for position in range(self.positions if lockstep else len(mine)):
                    if position < len(mine):
                        loss += self.step(mine[position]) * self.sizes[mine[position]]
                    else:
                        self._join()
                spent = time.perf_counter() - start
                self.iteration += 1
                self.elapsed += spent
                self.session_time += spent
                self.session_steps += self.n
                self.loss_curve.append(loss / self.own_images)
                bar.update(1)
                if progress and self.iteration == first + 2:  # the second: the first carries the start-up
                    _announce_estimate(bar, description, spent, total_iterations - self.iteration)
                bar.set_postfix(loss=f"{loss / self.own_images:.4g}", lr=f"{self.schedules[0].lr:.3g}", refresh=False)
                if checkpoint is not None and (self.iteration % every == 0 or self.iteration == total_iterations):
                    save_checkpoint(checkpoint, {"identity": identity or {}, **self.state_dict()})
        finally:
            bar.close()

    @torch.no_grad()
    def _join(self) -> None:
        """The all-reduce of a step position where this rank has no batch left (the others' steps need it)."""
        assert self.reduce is not None
        self.reduce(stored_sum(self.stored, self.counts))

    def step(self, j: int) -> float:
        """One optimiser step on batch j (global index, owned by this process); returns its total loss."""
        if not self.teacher.compiled:
            return self._step(j)
        # The first step through a compiled forward: its backward compiles now, and a failure there means
        # eager from here on, the step redone from the same random draws.
        generator = self.generators[self.local[j]]
        state = generator.get_state()
        try:
            value = self._step(j)
        except Exception as err:  # noqa: BLE001 - CompiledForward re-raises what is not a compile failure
            self.teacher.fall_back(err)
            generator.set_state(state)
            return self._step(j)
        self.teacher.confirm()
        return value

    @torch.enable_grad()  # also under a caller's torch.no_grad()
    def _step(self, j: int) -> float:
        i = self.local[j]
        x, generator = self.images[i], self.generators[i]
        view = self.pipeline.augment(x, generator)
        out = self.teacher.run(view, per_image=self.deep, keep_last=self._needs_last)
        current = self._moments(out, view)
        moments = combine_moments(self.stored, self.counts, j, current, self.reduce) if self.config.joint_statistics else current
        terms = self._terms(out, moments, j, generator)
        total: torch.Tensor = sum(terms.values())  # type: ignore[assignment]  # at least one term: a tensor
        optimizer = self.optimizers[i]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        value = float(total.detach())
        self.schedules[i].step(value)
        self.pipeline.project_(x)
        if self.config.joint_statistics:
            self._refresh(j, current)
        return value

    @property
    def _needs_last(self) -> bool:
        return self.config.output_loss == "official" and self.config.output_weight > 0

    def _moments(self, out: Outputs, view: torch.Tensor) -> torch.Tensor:
        """(2, T) moments of one batch: BN inputs, then the input pseudo-layer when enabled."""
        moments = torch.stack([out.m1, out.m2])
        if self.config.input_layer:
            moments = torch.cat([moments, image_moments(view)], dim=1)
        return moments

    @torch.no_grad()
    def _refresh(self, j: int, current: torch.Tensor) -> None:
        """Batch j's stored moments after its step: "reuse" keeps the pre-step BN moments (official DGH) with
        the input layer's from the finalised images; "forward" recomputes all from the finalised images."""
        final = self.pipeline.finalise(self.images[self.local[j]])
        if self.config.refresh == "forward":
            self.stored[j] = self._moments(self.teacher.run(final), final)
            return
        self.stored[j] = current.detach()
        if self.config.input_layer:
            channels = final.shape[1]
            self.stored[j, :, -channels:] = image_moments(final)

    def _terms(self, out: Outputs, moments: torch.Tensor, j: int, noise: torch.Generator | None) -> dict[str, torch.Tensor]:
        config, terms = self.config, {}
        if config.bn_weight > 0:
            terms["bn"] = config.bn_weight * self.objective(moments[0], moments[1])
        if config.output_loss != "none" and config.output_weight > 0:
            targets = self.teacher.targets
            terms["output"] = config.output_weight * output_loss(
                config.output_loss, out.logits, out.last_input, targets.mean[self.last], targets.std[self.last])
        if self.classes is not None and self.labels is not None and self.batch_classes is not None:
            assert out.image_mean is not None and out.image_var is not None, "FDDA runs the teacher with per-image moments"
            fdda = self.classes.config
            if fdda.ce_weight > 0:
                terms["ce"] = fdda.ce_weight * F.cross_entropy(out.logits, self.labels[self.slices[j]])
            if fdda.centralised_weight > 0:
                terms["centralised"] = fdda.centralised_weight * self.classes(
                    out.image_mean, out.image_var, self.batch_classes[j], None)
            if fdda.distorted_weight > 0:
                terms["distorted"] = fdda.distorted_weight * self.classes(
                    out.image_mean, out.image_var, self.batch_classes[j], noise)
        if not terms:
            terms["bn"] = moments.sum() * 0.0  # every weight is 0: a valid no-op
        return terms

    # ----------------------------------------------------------------------------------- results

    @torch.no_grad()
    def final_images(self) -> torch.Tensor:
        """(own images, C, H, W) finalised images of this process's batches, in batch order (all n in one process)."""
        return torch.cat([self.pipeline.finalise(x.detach()) for x in self.images]).contiguous()

    @torch.no_grad()
    def evaluate(self, store: bool = False) -> dict[str, float]:
        """Every loss term on the finalised images (no augmentation); `store`: also set the stored moments.

        Joint statistics: the terms of the whole set's moments; otherwise count-weighted means of the
        per-batch terms. "bn_distance" is method-independent: whole-set moments of the BN layers only,
        ||mu - mu^BN||^2 / C + ||sigma - sigma^BN||^2 / C averaged over layers (compare data sets with it).
        Distributed: each process evaluates its batches and one float64 all-reduce sums the loss sums and
        the weighted moments, so every rank returns the whole set's values. FDDA's distorted-centre noise
        comes from a per-batch generator (seed, j, EVALUATE_STREAM).
        """
        per_batch: list[torch.Tensor] = []
        sums: dict[str, float] = {}
        for x, j in zip(self.images, self.owned):
            final = self.pipeline.finalise(x.detach())
            out = self.teacher.run(final, per_image=self.deep, keep_last=self._needs_last)
            moments = self._moments(out, final)
            per_batch.append(moments)
            noise = batch_generator(self.seed, j, EVALUATE_STREAM)
            for key, value in self._terms(out, moments, j, noise).items():
                sums[key] = sums.get(key, 0.0) + float(value) * self.sizes[j]
        stacked = torch.stack(per_batch)
        if store:
            self.stored = torch.zeros(len(self.sizes), *stacked.shape[1:])
            self.stored[self.owned] = stacked
        weighted = torch.einsum("j,jkt->kt", self.counts[self.owned], stacked)
        if self.reduce is not None:
            keys = list(sums)
            packed = self.reduce(torch.cat([torch.tensor([sums[k] for k in keys], dtype=torch.float64),
                                            weighted.flatten().double()]))
            sums = {key: float(packed[i]) for i, key in enumerate(keys)}
            weighted = packed[len(keys):].reshape(weighted.shape).float()
        losses = {key: value / self.n for key, value in sums.items()}
        whole = weighted / self.counts.sum()
        if self.config.joint_statistics and self.config.bn_weight > 0:
            losses["bn"] = self.config.bn_weight * float(self.objective(whole[0], whole[1]))
        losses["total"] = sum(v for k, v in losses.items())
        losses["bn_distance"] = float(bn_distance(self.teacher, whole[:, : self.teacher.layout.total]))
        return losses


def bn_distance(teacher: Teacher, moments: torch.Tensor) -> torch.Tensor:
    """Average over BN layers of ||mu - mu^BN||^2 / C + ||sigma - sigma^BN||^2 / C, from (2, T_bn) moments."""
    channels = teacher.layout.channels
    weight = torch.cat([torch.full((c,), 1.0 / (len(channels) * c)) for c in channels])
    std = torch.sqrt((moments[1] - moments[0] ** 2).clamp_min(0) + 1e-6)
    return (weight * ((moments[0] - teacher.targets.mean) ** 2 + (std - teacher.targets.std) ** 2)).sum()


def _announce_estimate(bar: tqdm, description: str, seconds: float, iterations_left: int) -> None:
    """After the second iteration of this run (the first carries the start-up: allocation, first touch, 1.5x
    the steady time at 224x224): how long the rest should take, when that is worth saying (> 1 min)."""
    left = seconds * iterations_left
    if left > 60:
        bar.write(f"{description}: an iteration takes {describe_duration(seconds)}; the remaining {iterations_left} "
                  f"should take about {describe_duration(left)}", file=sys.stderr)
