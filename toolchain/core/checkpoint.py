"""Resumable-run checkpoints shared by generation and reconstruction: atomic writes, identity-checked reads.

Usage:
    save_checkpoint(path, {"identity": identity, **state}, kind="generation", version=2)
    state = load_checkpoint(path, identity, kind="generation", version=2)   # one-line errors otherwise

A checkpoint is a torch.save'd dict holding `kind`, `format` and an `identity` (what produced it: model
hash, options, seed, ...). A resume must present the same identity, so a checkpoint is never applied to
another run; a file of another kind or format is refused with the fix (delete it and start afresh).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from toolchain.core.atomic import atomic_output
from toolchain.errors import ConfigError, DataError


def save_checkpoint(path: Path, state: dict[str, Any], kind: str, version: int) -> None:
    """Write `state` with torch.save through a temporary file (an interruption leaves the old checkpoint)."""
    with atomic_output(path) as tmp:
        torch.save({"kind": kind, "format": version, **state}, tmp)


def load_checkpoint(path: Path, identity: dict[str, Any], kind: str, version: int,
                    unchecked: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a `kind` checkpoint written for the same run (`identity`, except the keys `unchecked`); one-line
    errors otherwise."""
    if not path.is_file():
        raise DataError(f"cannot resume: checkpoint {path} does not exist; run without --resume to start afresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for unreadable files
        raise DataError(f"cannot resume: checkpoint {path} is unreadable ({type(err).__name__}); delete it and start afresh") from err
    if not isinstance(state, dict) or state.get("kind", kind) != kind or state.get("format") != version:
        raise DataError(f"cannot resume: {path} is not a {kind} checkpoint of this toolchain; delete it and start afresh")
    stored = state.get("identity", {})
    differing = sorted(key for key in (set(identity) | set(stored)) - set(unchecked) if identity.get(key) != stored.get(key))
    if differing:
        raise ConfigError(
            f"cannot resume: checkpoint {path} was written by a run with different {', '.join(differing)}; "
            "pass the same model and options, or delete the checkpoint to start afresh"
        )
    return state
