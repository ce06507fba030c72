"""Reading and writing model files with errors a user can act on, and atomic writes.

Usage:
    model = load_model("resnet20.onnx")          # ModelFileError for missing / truncated / non-ONNX files
    save_model(model, "out/resnet20.onnx")       # written to a temporary file, then renamed into place
    with atomic_output("report.json") as tmp:     # nothing half-written if the block raises
        tmp.write_text(...)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from toolchain.errors import ModelFileError


def model_sha256(model: onnx.ModelProto) -> str:
    """sha256 of the serialised model: identifies it in manifests and checkpoints."""
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def load_model(path: str | Path) -> onnx.ModelProto:
    """Parse an ONNX file; raise ModelFileError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory; give an .onnx file")
    data = path.read_bytes()
    if not data:
        raise ModelFileError(f"{path} is empty; export the model again with `toolchain export`")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise ModelFileError(f"{path}: {_why_unparsable(data)} ({type(err).__name__}); {_remedy(path)}") from err
    if not model.graph.node or not model.graph.output or not model.opset_import:
        raise ModelFileError(f"{path}: {_why_unparsable(data)} (no graph nodes); {_remedy(path)}")
    return model


def _why_unparsable(data: bytes) -> str:
    # A serialized ModelProto starts with field 1 (ir_version, varint): tag byte 0x08. A file that
    # starts like that but does not parse was cut short (an interrupted copy or download).
    return "truncated or corrupt ONNX file" if data[:1] == b"\x08" else "not an ONNX file"


def _remedy(path: Path) -> str:
    return "check the file (an interrupted copy?) or export it again with `toolchain export`"


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Serialize `model` to `path` atomically (models below 2 GB: one file)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(model.SerializeToString())
    return path
