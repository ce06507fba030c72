"""FDDA's ingredients from real labelled images: per-class BNS centres and round-robin labels.

Usage:
    real = open_images(real_data, pre)
    centres = class_centres(teacher, real, per_class=1, num_classes=10, start=8, seed=0, class_names=names)
    centres.mean, centres.var             # (classes, deep channels): per-class BN-input statistics
    labels = round_robin_labels(n, num_classes)

A class centre (FDDA `BNScenters.py`) is, for every BN layer from `start` on, the per-channel spatial mean
and biased variance of each chosen image's BN input, averaged over the class's `per_class` images. The
images are a seeded random choice among the class's images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toolchain.data import ImageSet
from toolchain.datagen.teacher import Teacher
from toolchain.errors import DataError


@dataclass(frozen=True)
class Centres:
    """Per-class BNS centres over the deep layers, and which real images made them."""

    mean: torch.Tensor  # (num_classes, D)
    var: torch.Tensor   # (num_classes, D)
    sources: tuple[str, ...]
    indices: np.ndarray  # rows of the ImageSet used, grouped by class


def choose_per_class(labels: np.ndarray, per_class: int, num_classes: int, seed: int,
                     class_names: tuple[str, ...] | None, source: str) -> np.ndarray:
    """Indices of `per_class` images of every class 0..num_classes-1 (seeded); DataError naming short classes."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{source}: labels go up to {labels.max()} but the model has {num_classes} classes; "
                        "give images of the model's classes")
    rng = np.random.default_rng(seed)
    chosen, short = [], []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            short.append((c, len(members)))
            continue
        chosen.append(np.sort(rng.permutation(members)[:per_class]))
    if short:
        def name(c: int) -> str:
            return class_names[c] if class_names and c < len(class_names) else str(c)
        missing = [name(c) for c, count in short if count == 0]
        few = [f"{name(c)} ({count})" for c, count in short if count > 0]
        parts = ([f"no images of class{'es' if len(missing) > 1 else ''} {', '.join(missing)}"] if missing else []) + \
                ([f"fewer than {per_class} images of {', '.join(few)}"] if few else [])
        raise DataError(f"{source}: FDDA needs {per_class} labelled image(s) of every one of the model's {num_classes} "
                        f"classes but has {'; '.join(parts)}: add images of those classes or lower per_class")
    return np.concatenate(chosen)


@torch.no_grad()
def class_centres(teacher: Teacher, real: ImageSet, per_class: int, num_classes: int, start: int, seed: int,
                  class_names: tuple[str, ...] | None = None, source: str = "the real data", batch: int = 256) -> Centres:
    """Centres from `per_class` seeded images per class (see the module docstring)."""
    indices = choose_per_class(real.labels, per_class, num_classes, seed, class_names, source)
    layers = range(start, len(teacher.layout.channels))
    means, variances = [], []
    for begin in range(0, len(indices), batch):
        rows = indices[begin:begin + batch]
        out = teacher.run(torch.from_numpy(real.pre.apply(real.images[rows])), per_image=layers)
        means.append(out.image_mean)
        variances.append(out.image_var)
    image_mean, image_var = torch.cat(means), torch.cat(variances)
    labels = torch.from_numpy(real.labels[indices])
    member = torch.nn.functional.one_hot(labels, num_classes).T.float()
    member = member / member.sum(1, keepdim=True)
    return Centres(member @ image_mean, member @ image_var, tuple(real.names[i] for i in indices), indices)


def round_robin_labels(n: int, num_classes: int) -> torch.Tensor:
    """Labels 0, 1, ..., K-1, 0, 1, ...: every class as often as possible, every batch mixed."""
    return torch.arange(n) % num_classes
