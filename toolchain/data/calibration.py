"""Calibration sets: float32 model inputs in an .npz, plus a manifest saying where they came from.

Usage:
    calib = sample_calibration("../shared/datasets/cifar10-train-jpg.tar.gz", pre, n=512, seed=0)
    save_calibration("calib_data/real512.npz", calib)
    calib = load_calibration("calib_data/real512.npz")          # CalibrationSet(inputs, labels, manifest)

The format is described in calib_data/README.md: `inputs` float32 (N, C, H, W), already preprocessed
(exactly what the model's input receives); optional `labels` int64 (N,); optional `manifest`, a JSON
string (0-d unicode array) with at least "method" and "seed".
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.core.atomic import atomic_output
from toolchain.data.images import open_images, read_npz
from toolchain.errors import DataError
from toolchain.onnxio.preprocessing import Preprocessing


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """Model inputs for calibration and what is known about their origin."""

    inputs: np.ndarray  # float32 (N, C, H, W)
    labels: np.ndarray | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def sample_calibration(data_path: str | Path, pre: Preprocessing, n: int, seed: int = 0) -> CalibrationSet:
    """`n` images drawn reproducibly (seed) from an image dataset, preprocessed for the model."""
    if n < 1:
        raise DataError(f"the calibration set must hold at least one image, got --calib-limit {n}")
    images = open_images(data_path, pre, limit=n, seed=seed)
    inputs = np.concatenate([batch for batch, _ in images.batches(256)]) if len(images) else np.zeros((0,), np.float32)
    manifest = {"method": "real", "source": str(data_path), "n": len(images), "seed": seed, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return CalibrationSet(inputs=inputs, labels=images.labels.copy(), manifest=manifest)


def save_calibration(path: str | Path, calib: CalibrationSet) -> Path:
    """Write the .npz atomically (nothing half-written if interrupted)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {"inputs": np.ascontiguousarray(calib.inputs, dtype=np.float32)}
    if calib.labels is not None:
        arrays["labels"] = np.asarray(calib.labels, dtype=np.int64)
    arrays["manifest"] = np.array(json.dumps(calib.manifest, sort_keys=True))
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types a first keyword as allow_pickle
    return path


def load_calibration(path: str | Path) -> CalibrationSet:
    """Read a calibration .npz; DataError (naming the file and key) when it does not follow the format."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration file {path} does not exist")
    data = read_npz(path, "calibration file", "a calibration .npz holds float32 model inputs under 'inputs' "
                    "(see calib_data/README.md); save it again")
    if "inputs" not in data:
        raise DataError(
            f"{path} has no 'inputs' array (it has {', '.join(data) or 'nothing'}); a calibration .npz holds "
            "float32 model inputs under 'inputs' (see calib_data/README.md), or pass an image dataset to --calib"
        )
    inputs = data["inputs"]
    if inputs.ndim == 0:
        raise DataError(f"{path}: 'inputs' is a single value, not a batch of model inputs (N, C, H, W); save it again")
    labels = data.get("labels")
    manifest: Any = {}
    if "manifest" in data:
        try:
            manifest = json.loads(str(data["manifest"]))
        except json.JSONDecodeError:
            manifest = None
        if not isinstance(manifest, dict):
            raise DataError(f"{path}: 'manifest' is not a JSON object; remove it or save the file with "
                            "toolchain.data.calibration.save_calibration")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(inputs) or not np.issubdtype(labels.dtype, np.integer)):
        labels = None  # labels are informational (FDDA's classes); wrong ones are dropped, not trusted
    return CalibrationSet(inputs=inputs, labels=labels, manifest=manifest)
