"""Packaging: a plain `pip install .` (not only `-e`) must ship every subpackage."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_setup_cfg_lists_every_toolchain_subpackage():
    """Each folder of toolchain/ with an __init__.py is in [options] packages (setuptools does not recurse)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = {line.strip() for line in config["options"]["packages"].splitlines() if line.strip()}
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "toolchain").rglob("__init__.py")}
    assert found - listed == set(), f"add to setup.cfg [options] packages: {sorted(found - listed)}"
