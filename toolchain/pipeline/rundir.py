"""The run directory: one folder per run holding everything it made, and the run's log file.

Usage:
    with run_directory(Path("runs/default"), overwrite=False) as folder:   # ConfigError if it exists
        with run_log(folder / "run.log") as log:
            log.info("export ...")
    # an exception inside removes the folder again: a failed run leaves no partial outputs; an interruption
    # (Ctrl-C) keeps it for `toolchain run --resume`, and so does any failure of a resumed run
    with run_directory(Path("runs/default"), overwrite=False, resume=True):          # an existing run, kept as is

A folder is only replaced (`overwrite`) when it is a run directory (it holds RUN_MARKER), so a mistyped
--run-dir cannot delete a folder of the user's.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolchain.errors import ConfigError

RUN_MARKER = "config.resolved.yaml"
LOGGER_NAME = "toolchain.run"


def check_resumable(folder: Path, overwrite: bool) -> None:
    """ConfigError unless `folder` is a run directory that --resume can continue."""
    if overwrite:
        raise ConfigError("--resume continues the run directory and --overwrite replaces it: choose one")
    if not (folder / RUN_MARKER).is_file():
        raise ConfigError(f"there is no run to resume in {folder} (no {RUN_MARKER}); run without --resume, or give the "
                          "--run-dir (or config) of the stopped run")


@contextmanager
def run_directory(folder: Path, overwrite: bool, resume: bool = False) -> Iterator[Path]:
    """Create `folder` (replacing an old run directory when `overwrite`; kept as it is when `resume`); remove it
    if the body raises, unless the run was interrupted or resumed."""
    if resume:
        check_resumable(folder, overwrite)
        yield folder  # a resumed run's folder holds earlier sessions' work: never removed here
        return
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"run directory {folder} is a file; choose another --run-dir")
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise ConfigError(f"run directory {folder} already exists; pass --overwrite to replace it or choose "
                              "another --run-dir")
        if not (folder / RUN_MARKER).is_file():
            raise ConfigError(f"{folder} is not empty and is not a run directory (it has no {RUN_MARKER}); "
                              "--overwrite only replaces run directories: choose another --run-dir")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except KeyboardInterrupt:
        logging.getLogger(LOGGER_NAME).warning("interrupted: the run directory %s is kept; `toolchain run` with the "
                                               "same config and --resume continues it", folder)
        raise
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@contextmanager
def run_log(path: Path) -> Iterator[logging.Logger]:
    """The run's logger; while open, every toolchain record at INFO and up (DEBUG too when the "toolchain"
    logger is set to it, as --log-level debug does) also goes to `path`, with times."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    parent = logging.getLogger("toolchain")  # the passes and the quantizer log below it
    previous = parent.level
    parent.setLevel(min(parent.getEffectiveLevel(), logging.INFO))
    parent.addHandler(handler)
    try:
        yield logging.getLogger(LOGGER_NAME)
    finally:
        parent.removeHandler(handler)
        parent.setLevel(previous)
        handler.close()
