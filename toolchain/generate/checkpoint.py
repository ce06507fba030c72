"""Generation checkpoints: everything needed to continue a run bit for bit, written atomically.

Usage:
    save_checkpoint(path, state_dict)                    # a temporary file renamed into place
    state = load_checkpoint(path, identity)              # ConfigError when it belongs to another run

The state holds the images, every batch's optimiser and scheduler state, the stored per-batch statistics,
the random generators' states (visit order, one per batch) and the iteration counter, plus an `identity`
(method, model hash, n, seed, hyperparameters, world size, rank) that a resume must match. Under
torch.distributed every process writes its own file (its batches only): `distributed.rank_path`.
Format 2 (per-batch generators) replaced format 1 (one generator); a format-1 file is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolchain.core import checkpoint

FORMAT = 2
KIND = "generation"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    checkpoint.save_checkpoint(path, state, KIND, FORMAT)


def load_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    return checkpoint.load_checkpoint(path, identity, KIND, FORMAT)
