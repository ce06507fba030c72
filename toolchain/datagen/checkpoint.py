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

import torch

from toolchain.errors import ConfigError, DataError
from toolchain.modelio import atomic_output

FORMAT = 2


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` with torch.save through a temporary file (an interruption leaves the old checkpoint)."""
    with atomic_output(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint written for the same run (`identity`); one-line errors otherwise."""
    if not path.is_file():
        raise DataError(f"cannot resume: checkpoint {path} does not exist; run without --resume to start afresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for unreadable files
        raise DataError(f"cannot resume: checkpoint {path} is unreadable ({type(err).__name__}); delete it and start afresh") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"cannot resume: {path} is not a generation checkpoint of this toolchain; delete it and start afresh")
    stored = state.get("identity", {})
    differing = sorted(key for key in set(identity) | set(stored) if identity.get(key) != stored.get(key))
    if differing:
        raise ConfigError(
            f"cannot resume: checkpoint {path} was written by a run with different {', '.join(differing)}; "
            "pass the same model and options, or delete the checkpoint to start afresh"
        )
    return state
