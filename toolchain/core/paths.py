"""Where the project's reference material lives (../shared by default; override with TOOLCHAIN_SHARED).

Usage:
    weights = shared_dir() / "weights" / "resnet20-12fca82f.th"
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_ENV = "TOOLCHAIN_SHARED"
REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """$TOOLCHAIN_SHARED if set, else ../shared beside the working directory, else beside the repository."""
    if env := os.environ.get(SHARED_ENV):
        return Path(env)
    for candidate in (Path.cwd().parent / "shared", REPO_ROOT.parent / "shared"):
        if candidate.is_dir():
            return candidate
    return Path("..") / "shared"
