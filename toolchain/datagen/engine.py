"""The optimisation loop shared by dgh, fdda and bns: images as parameters, one optimiser per batch.

Usage:
    engine = Engine(teacher, pre, config, n=1024, seed=0)                 # + labels/classes for fdda
    engine.initialise()                                                    # or engine.load(checkpoint_state)
    engine.run(progress=True, checkpoint=path, identity=identity)          # outer iterations
    images = engine.final_images(); losses = engine.evaluate()

Per step on batch j (DGH, methods.md section 2.4): augment -> forward with BN-input moments -> (joint:
combine with the other batches' stored moments) -> loss -> backward to the pixels only -> optimiser
step -> plateau schedule -> clip to the valid range -> refresh batch j's stored moments without grad.
Memory beyond the images and their optimiser state: the stored moments, J x T x 2 floats (T = channels
of every BN layer plus the input pseudo-layer).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from tqdm import tqdm

from toolchain.datagen.augment import ImagePipeline, batch_sizes
from toolchain.datagen.checkpoint import save_checkpoint
from toolchain.datagen.config import GenerationConfig
from toolchain.datagen.losses import (BatchClasses, BNObjective, ClassObjective, combine_moments, image_moments,
                                      output_loss)
from toolchain.datagen.schedule import PlateauSchedule
from toolchain.datagen.teacher import Outputs, Teacher
from toolchain.preprocessing import Preprocessing

Reduce = Callable[[torch.Tensor], torch.Tensor]


class Engine:
    """State and loop of one image-optimisation run (see the module docstring)."""

    def __init__(self, teacher: Teacher, pre: Preprocessing, config: GenerationConfig, n: int, seed: int,
                 labels: torch.Tensor | None = None, classes: ClassObjective | None = None,
                 deep_start: int = 0, reduce: Reduce | None = None) -> None:
        self.teacher, self.config, self.n, self.seed = teacher, config, n, seed
        self.pipeline = ImagePipeline(config.augment, pre)
        self.objective = BNObjective.build(teacher, config, pre.num_channels)
        self.sizes = batch_sizes(n, config.batch_size)
        self.counts = torch.tensor(self.sizes, dtype=torch.float32)
        starts = [sum(self.sizes[:j]) for j in range(len(self.sizes))]
        self.slices = [slice(s, s + size) for s, size in zip(starts, self.sizes)]
        self.labels = labels
        self.classes = classes
        self.batch_classes = [BatchClasses.of(labels[s]) for s in self.slices] if labels is not None else None
        self.deep = tuple(range(deep_start, len(teacher.layout.channels))) if classes is not None else ()
        self.reduce = reduce
        self.last = teacher.layout.span(len(teacher.layout.channels) - 1)
        self.generator = torch.Generator().manual_seed(seed)
        self.images: list[torch.Tensor] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedules: list[PlateauSchedule] = []
        self.stored = torch.zeros(len(self.sizes), 2, self.objective.size)
        self.iteration = 0
        self.elapsed = 0.0  # seconds spent in outer iterations, over every session of this run
        self.initial_losses: dict[str, float] = {}
        self.session_steps = 0
        self.session_time = 0.0

    # ------------------------------------------------------------------------------------- state

    def initialise(self) -> None:
        """Gaussian images, fresh optimisers, and every batch's moments from its finalised images."""
        canvases = self.pipeline.initial(self.n, self.generator)
        self._set_images([canvases[s].clone() for s in self.slices])
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
        return {
            "iteration": self.iteration, "elapsed": self.elapsed, "initial_losses": self.initial_losses,
            "images": [x.detach().clone() for x in self.images],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedules": [s.state_dict() for s in self.schedules],
            "stored": self.stored.clone(), "generator": self.generator.get_state(),
        }

    def load(self, state: dict[str, Any]) -> None:
        self._set_images([x.clone() for x in state["images"]])
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
        for schedule, saved in zip(self.schedules, state["schedules"]):
            schedule.load_state_dict(saved)
        self.stored = state["stored"].clone()
        self.generator.set_state(state["generator"])
        self.iteration, self.elapsed = int(state["iteration"]), float(state["elapsed"])
        self.initial_losses = dict(state["initial_losses"])

    # -------------------------------------------------------------------------------------- loop

    def run(self, progress: bool = True, checkpoint: Path | None = None, identity: dict[str, Any] | None = None,
            description: str = "generate") -> None:
        """Outer iterations until config.iterations; each visits every batch once, in a random order."""
        total_iterations, every = self.config.iterations, self.config.checkpoint_every
        bar = tqdm(total=total_iterations, initial=self.iteration, disable=not progress, file=sys.stderr,
                   desc=description, unit="it", dynamic_ncols=True)
        try:
            while self.iteration < total_iterations:
                start = time.perf_counter()
                loss = 0.0
                for j in torch.randperm(len(self.images), generator=self.generator).tolist():
                    loss += self.step(j) * self.sizes[j]
                spent = time.perf_counter() - start
                self.iteration += 1
                self.elapsed += spent
                self.session_time += spent
                self.session_steps += self.n
                bar.update(1)
                bar.set_postfix(loss=f"{loss / self.n:.4g}", lr=f"{self.schedules[0].lr:.3g}", refresh=False)
                if checkpoint is not None and (self.iteration % every == 0 or self.iteration == total_iterations):
                    save_checkpoint(checkpoint, {"identity": identity or {}, **self.state_dict()})
        finally:
            bar.close()

    @torch.enable_grad()  # also under a caller's torch.no_grad()
    def step(self, j: int) -> float:
        """One optimiser step on batch j; returns its total loss."""
        x = self.images[j]
        view = self.pipeline.augment(x, self.generator)
        out = self.teacher.run(view, per_image=self.deep, keep_last=self._needs_last)
        current = self._moments(out, view)
        moments = combine_moments(self.stored, self.counts, j, current, self.reduce) if self.config.joint_statistics else current
        terms = self._terms(out, moments, j, self.generator)
        total = sum(terms.values())
        optimizer = self.optimizers[j]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        value = float(total.detach())
        self.schedules[j].step(value)
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
        final = self.pipeline.finalise(self.images[j])
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
        """(n, C, H, W) finalised images: smoothing, centre crop, clip."""
        return torch.cat([self.pipeline.finalise(x.detach()) for x in self.images])

    @torch.no_grad()
    def evaluate(self, store: bool = False) -> dict[str, float]:
        """Every loss term on the finalised images (no augmentation); `store`: also set the stored moments.

        Joint statistics: the terms of the whole set's moments; otherwise count-weighted means of the
        per-batch terms. "bn_distance" is method-independent: whole-set moments of the BN layers only,
        ||mu - mu^BN||^2 / C + ||sigma - sigma^BN||^2 / C averaged over layers (compare data sets with it).
        """
        noise = torch.Generator().manual_seed(self.seed)
        per_batch: list[torch.Tensor] = []
        sums: dict[str, float] = {}
        for j, x in enumerate(self.images):
            final = self.pipeline.finalise(x.detach())
            out = self.teacher.run(final, per_image=self.deep, keep_last=self._needs_last)
            moments = self._moments(out, final)
            per_batch.append(moments)
            for key, value in self._terms(out, moments, j, noise).items():
                sums[key] = sums.get(key, 0.0) + float(value) * self.sizes[j]
        stacked = torch.stack(per_batch)
        if store:
            self.stored = stacked.clone()
        losses = {key: value / self.n for key, value in sums.items()}
        whole = torch.einsum("j,jkt->kt", self.counts, stacked) / self.counts.sum()
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
