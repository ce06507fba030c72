"""Reconstruction checkpoints: finished units survive a divergence, a crash or Ctrl-C, and `--resume` goes on.

Usage:
    point = ResumePoint(Path("r20_pd.onnx.ckpt"), identity={"model": ..., "calib": ..., ...}, resume=False)
    result = reconstruct(..., resume_point=point)   # saves after every finished unit
    point = ResumePoint(same_path, same_identity, resume=True)
    result = reconstruct(..., resume_point=point)   # skips the finished units, continues bit for bit

A checkpoint holds, after unit K: the learned activation step sizes and hard-rounded weight integers of
units 1..K, their report entries, and the random generators' states, so an uninterrupted run and a
stopped-and-resumed one give the same model. Its identity (float model hash, calibration hash, quantizer
settings, reconstruction method and seed, the unit partition) must match on resume. The remaining
reconstruction hyperparameters may differ: after a divergence the usual fix is to resume with other
settings, and the finished units keep what they learned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolchain.core.checkpoint import load_checkpoint, save_checkpoint
from toolchain.quantize.report_sections import UnitReport

KIND = "reconstruction"
FORMAT = 1


@dataclass(frozen=True)
class ResumePoint:
    """Where the checkpoint lives, what run it belongs to, and whether to continue from it."""

    path: Path
    identity: dict[str, Any]
    resume: bool = False


@dataclass
class Progress:
    """The state after the finished units (`units` holds their report entries, in order)."""

    scales: dict[str, np.ndarray]
    integers: dict[str, np.ndarray]
    units: list[UnitReport]
    generator_state: torch.Tensor
    torch_rng_state: torch.Tensor


def save_progress(point: ResumePoint, progress: Progress) -> None:
    save_checkpoint(point.path, {
        "identity": point.identity,
        "scales": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in progress.scales.items()},
        "integers": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in progress.integers.items()},
        "units": json.dumps([unit.to_dict() for unit in progress.units], default=float),
        "generator_state": progress.generator_state,
        "torch_rng_state": progress.torch_rng_state,
    }, KIND, FORMAT)


def check_resumable(point: ResumePoint) -> None:
    """Fail early (before calibrating) when the checkpoint is missing or belongs to another run; the unit
    partition, known only later, is checked by load_progress."""
    load_checkpoint(point.path, point.identity, KIND, FORMAT, unchecked=("units",))


def load_progress(point: ResumePoint) -> Progress:
    state = load_checkpoint(point.path, point.identity, KIND, FORMAT)
    return Progress(
        scales={k: v.numpy() for k, v in state["scales"].items()},
        integers={k: v.numpy() for k, v in state["integers"].items()},
        units=[UnitReport.from_dict(unit) for unit in json.loads(state["units"])],
        generator_state=state["generator_state"],
        torch_rng_state=state["torch_rng_state"],
    )
