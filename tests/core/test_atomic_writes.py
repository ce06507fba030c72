"""A write killed with SIGKILL leaves the old file or nothing, never a partial one (models, calibration sets, checkpoints).

The child (tests/kill_writer.py) stops at a chosen moment of the write: half the bytes in the temporary
file, the temporary file complete but not yet renamed, or around either rename of a model with external
data. The test kills it there with SIGKILL, reads what is at the path, and writes again to check that
the killed writer's temporaries are cleaned up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kill_writer import content, write

WRITER = Path(__file__).resolve().parents[1] / "kill_writer.py"
FILE_NAMES = {"model": "m.onnx", "model-external": "m.onnx", "calibration": "c.npz", "checkpoint": "c.ckpt"}


def _kill_at(kind: str, phase: str, path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, str(WRITER), kind, phase, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline().strip()
        assert line == "READY", f"the writer did not reach {phase}: {line!r}"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL


def _version(kind: str, path: Path) -> int | None:
    """Which complete version is at `path` (None: nothing); a partial or mixed file fails to read or compare."""
    if not path.exists():
        return None
    if kind.startswith("model"):
        from toolchain.onnxio.files import load_model

        loaded = load_model(path).graph.initializer[0].raw_data
        versions = [v for v in (0, 1) if content(kind, v).graph.initializer[0].raw_data == loaded]
    elif kind == "calibration":
        from toolchain.data.calibration import load_calibration

        loaded = load_calibration(path).inputs
        versions = [v for v in (0, 1) if np.array_equal(content(kind, v).inputs, loaded)]
    else:
        from toolchain.core.checkpoint import load_checkpoint

        state = load_checkpoint(path, {}, kind="test", version=1, unchecked=("version",))
        versions = [v for v in (0, 1) if np.array_equal(content(kind, v)["images"].numpy(), state["images"].numpy())]
    assert len(versions) == 1, f"{path} holds neither the old nor the new content"
    return versions[0]


CASES = [(kind, phase, old) for kind in ("model", "calibration", "checkpoint") for phase in ("mid-write", "before-rename")
         for old in (True, False)]
CASES += [("model-external", phase, True) for phase in ("mid-write", "replace-1-before", "replace-2-before", "replace-2-after")]
CASES += [("model-external", "replace-1-before", False)]


@pytest.mark.parametrize("kind, phase, old", CASES)
def test_a_killed_write_leaves_the_old_file_or_nothing(kind, phase, old, tmp_path):
    """SIGKILL at `phase`: the path holds the old complete content (or nothing when there was none, or the new complete
    content once its rename happened); writing again succeeds and removes the killed writer's temporary files."""
    path = tmp_path / FILE_NAMES[kind]
    if old:
        write(kind, path, version=0)
    _kill_at(kind, phase, path)
    expected = {0} if old else {None}
    if phase.endswith("-after"):
        expected = {1}
    assert _version(kind, path) in expected
    write(kind, path, version=1)
    assert _version(kind, path) == 1
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert not leftovers, f"temporary files left behind: {leftovers}"
    if kind == "model-external":
        assert len(list(tmp_path.glob("m.onnx.*.data"))) == 1, "only the current data file remains"


def test_outputs_get_the_permissions_of_a_new_file(tmp_path):
    """Atomic outputs are not left at mkstemp's 0600: they get 0666 minus the umask, like any file the user creates."""
    umask = os.umask(0o022)
    try:
        write("model", tmp_path / "m.onnx", version=0)
        write("model-external", tmp_path / "e.onnx", version=0)
    finally:
        os.umask(umask)
    for path in (tmp_path / "m.onnx", tmp_path / "e.onnx", *tmp_path.glob("e.onnx.*.data")):
        assert path.stat().st_mode & 0o777 == 0o644, path
