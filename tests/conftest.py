"""Shared test fixtures.

Usage:
    def test_real_data(shared_file):
        archive = shared_file("datasets", "cifar10-test-jpg.tar.gz")   # skipped when missing, fails when CI=true

Reference data under $TOOLCHAIN_SHARED (default ../shared) is not part of the repository: a developer
without it still gets a green run (those tests skip), but CI must have it, so a missing file fails there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from toolchain.core.paths import SHARED_ENV
from toolchain.core.paths import shared_dir as _shared_dir


def _missing(path: Path) -> None:
    message = f"{path} is missing: set {SHARED_ENV} to the shared reference data folder"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_file() -> Callable[..., Path]:
    """A function (*parts) -> path under the shared folder; skips the test if absent (fails when CI=true)."""

    def find(*parts: str) -> Path:
        path = _shared_dir().joinpath(*parts)
        if not path.exists():
            _missing(path)
        return path

    return find


@pytest.fixture
def shared_dir(shared_file: Callable[..., Path]) -> Path:
    """The shared reference data folder; skips the test if absent (fails when CI=true)."""
    return shared_file()
