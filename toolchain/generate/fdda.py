"""FDDA's ingredients from real labelled images: per-class BNS centres and round-robin labels.

Usage:
    real = open_images(real_data, pre)
    centres = class_centres(teacher, real, per_class=1, num_classes=10, start=8, seed=0, class_names=names)
    centres.mean, centres.var             # (classes, deep channels): per-class BN-input statistics
    labels = round_robin_labels(n, centres.classes)

A class centre (FDDA `BNScenters.py`) is, for every BN layer from `start` on, the per-channel spatial mean
and biased variance of each chosen image's BN input, averaged over the class's `per_class` images. The
images are a seeded random choice among the class's images. With `present_only` only the classes the real
data has `per_class` images of get a centre (the other rows stay zero and no synthetic image is labelled
with them): FDDA on a sample of a large label set, e.g. 500 of ImageNet's 1000 classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toolchain.data.images import ImageSet
from toolchain.errors import DataError
from toolchain.generate.teacher import Teacher


@dataclass(frozen=True)
class Centres:
    """Per-class BNS centres over the deep layers, and which real images made them."""

    mean: torch.Tensor  # (num_classes, D); zero rows for classes without a centre
    var: torch.Tensor   # (num_classes, D)
    sources: tuple[str, ...]
    indices: np.ndarray  # rows of the ImageSet used, grouped by class
    classes: np.ndarray  # the class ids that have a centre, ascending


def choose_per_class(labels: np.ndarray, per_class: int, num_classes: int, seed: int,
                     class_names: tuple[str, ...] | None, source: str, present_only: bool = False) -> np.ndarray:
    """Indices of `per_class` images of every class 0..num_classes-1 (seeded); DataError naming short classes.

    With `present_only`, classes short of images are skipped (DataError only when no class is left)."""
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
    if present_only and chosen:
        return np.concatenate(chosen)
    if present_only:
        raise DataError(f"{source}: no class has {per_class} labelled image(s); give more images per class or lower per_class")
    if short:
        def name(c: int) -> str:
            return class_names[c] if class_names and c < len(class_names) else str(c)
        missing = [name(c) for c, count in short if count == 0]
        few = [f"{name(c)} ({count})" for c, count in short if count > 0]
        parts = ([f"no images of class{'es' if len(missing) > 1 else ''} {', '.join(missing)}"] if missing else []) + \
                ([f"fewer than {per_class} images of {', '.join(few)}"] if few else [])
        raise DataError(f"{source}: FDDA needs {per_class} labelled image(s) of every one of the model's {num_classes} "
                        f"classes but has {'; '.join(parts)}: add images of those classes, lower per_class, or synthesise only the "
                        "classes the data has (--fdda-classes present)")
    return np.concatenate(chosen)


@torch.no_grad()
def class_centres(teacher: Teacher, real: ImageSet, per_class: int, num_classes: int, start: int, seed: int,
                  class_names: tuple[str, ...] | None = None, source: str = "the real data", batch: int = 256,
                  present_only: bool = False) -> Centres:
    """Centres from `per_class` seeded images per class (see the module docstring)."""
    indices = choose_per_class(real.labels, per_class, num_classes, seed, class_names, source, present_only)
    layers = range(start, len(teacher.layout.channels))
    means, variances = [], []
    for begin in range(0, len(indices), batch):
        rows = indices[begin:begin + batch]
        out = teacher.run(torch.from_numpy(real.pre.apply(real.images[rows])), per_image=layers)
        assert out.image_mean is not None and out.image_var is not None, "asked for per-image moments"
        means.append(out.image_mean)
        variances.append(out.image_var)
    image_mean, image_var = torch.cat(means), torch.cat(variances)
    labels = torch.from_numpy(real.labels[indices])
    member = torch.nn.functional.one_hot(labels, num_classes).T.float()
    member = member / member.sum(1, keepdim=True).clamp(min=1)  # a class without images keeps a zero row
    return Centres(member @ image_mean, member @ image_var, tuple(real.names[i] for i in indices), indices,
                   np.unique(labels.numpy()))


def round_robin_labels(n: int, classes: np.ndarray) -> torch.Tensor:
    """Labels c0, c1, ..., c(K-1), c0, ... over `classes`: every class as often as possible, every batch mixed."""
    return torch.from_numpy(np.asarray(classes, dtype=np.int64))[torch.arange(n) % len(classes)]
