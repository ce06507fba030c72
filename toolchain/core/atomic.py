"""Atomic file writes: an output appears complete or not at all, even if the process is killed mid-write.

Usage:
    with atomic_output("report.json") as tmp:        # a temporary file beside report.json
        tmp.write_text(...)                           # renamed onto report.json only if the block finishes

The temporary file is flushed to disk (fsync) before the rename, and os.replace is atomic on POSIX and
Windows, so a reader sees the old file or the new one, never a mixture. A SIGKILL cannot run cleanup code:
it leaves the hidden temporary `.NAME.PID.*.tmp` behind, and the next write of NAME removes temporaries
whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from toolchain.errors import ConfigError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its file alone
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete `.NAME.PID.*.tmp` files beside `path` left by killed writers (their PID no longer runs)."""
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        pid_text = candidate.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            candidate.unlink(missing_ok=True)


def default_file_mode() -> int:
    """0o666 minus the process umask: what open() gives a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_file(path: Path) -> None:
    """Flush `path`'s data to disk, so a rename after it never exposes an empty or partial file after a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; outputs get the permissions of any new file
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing file unless asked to (ConfigError naming the file and the flag)."""
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; pass --overwrite to replace it or choose another -o")
