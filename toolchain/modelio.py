"""Reading and writing model files with errors a user can act on, and atomic writes.

Usage:
    model = load_model("resnet20.onnx")          # ModelFileError for missing / truncated / non-ONNX files
    save_model(model, "out/resnet20.onnx")       # written to a temporary file, then renamed into place
    with atomic_output("report.json") as tmp:     # nothing half-written if the block raises
        tmp.write_text(...)

Models of any size: a file with external data (weights in a side file in the same folder) is read with
its data, after every location was checked (external_data.py); a model too large for one protobuf
(2 GiB) is written with its weights in NAME.<hash>.data beside it. In memory a model always holds its data.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, EncodeError

from toolchain.atomic import atomic_output
from toolchain.errors import ModelFileError
from toolchain.validate import check_structure
from toolchain.external_data import all_tensors, data_files, detached_raw_data, read_external_data, write_with_external_data

__all__ = ["atomic_output", "fits_one_protobuf", "load_model", "model_sha256", "save_model"]

PROTOBUF_LIMIT = (1 << 31) - 1  # protobuf cannot serialise (or size) a message this large
EXTERNAL_DATA_ABOVE = 1 << 30  # bytes: larger models are written with external data (headroom below the limit)


def serialized_size(model: onnx.ModelProto) -> int:
    """Bytes of the serialised model; PROTOBUF_LIMIT when it is too large for protobuf to say."""
    # The weights' bytes first: cheap, and protobuf takes seconds to find out that a 2 GiB model is too large.
    if sum(len(t.raw_data) for t in model.graph.initializer) >= PROTOBUF_LIMIT:
        return PROTOBUF_LIMIT
    try:
        return model.ByteSize()
    except (EncodeError, ValueError):
        return PROTOBUF_LIMIT


def fits_one_protobuf(model: onnx.ModelProto, limit: int = EXTERNAL_DATA_ABOVE) -> bool:
    """Whether `model` is written as one file (and may be handed to onnxruntime as bytes)."""
    return serialized_size(model) < limit


def model_sha256(model: onnx.ModelProto) -> str:
    """sha256 of the serialised model: identifies it in manifests and checkpoints (any size)."""
    if fits_one_protobuf(model, PROTOBUF_LIMIT):
        return hashlib.sha256(model.SerializeToString()).hexdigest()
    digest = hashlib.sha256()
    with detached_raw_data(list(all_tensors(model))) as weights:  # the skeleton, then the weights in graph order
        for data in weights:
            digest.update(len(data).to_bytes(8, "little"))
        digest.update(model.SerializeToString())
        for data in weights:
            digest.update(data)
    return digest.hexdigest()


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
    read_external_data(model, path.parent, str(path))
    check_structure(model, str(path))
    return model


def _why_unparsable(data: bytes) -> str:
    # A serialized ModelProto starts with field 1 (ir_version, varint): tag byte 0x08. A file that
    # starts like that but does not parse was cut short (an interrupted copy or download).
    return "truncated or corrupt ONNX file" if data[:1] == b"\x08" else "not an ONNX file"


def _remedy(path: Path) -> str:
    return "check the file (an interrupted copy?) or export it again with `toolchain export`"


def save_model(model: onnx.ModelProto, path: str | Path, external_data_above: int = EXTERNAL_DATA_ABOVE) -> Path:
    """Serialize `model` to `path` atomically: one file below `external_data_above` bytes, else with its weights
    in NAME.<hash>.data beside it (the data file lands first, so the model never appears without it)."""
    path = Path(path)
    if fits_one_protobuf(model, external_data_above):
        with atomic_output(path) as tmp:
            tmp.write_bytes(model.SerializeToString())
        for stale in data_files(path):  # an earlier, larger version's data
            stale.unlink(missing_ok=True)
    else:
        write_with_external_data(model, path)
    return path


@contextlib.contextmanager
def written_to_temporary_folder(model: onnx.ModelProto) -> Iterator[Path]:
    """`model` saved with external data in a temporary folder, for tools that take a path (onnx.checker,
    onnxruntime) when it is too large to hand over as bytes; the folder is removed after the block."""
    with tempfile.TemporaryDirectory(prefix="toolchain-") as folder:
        path = Path(folder) / "model.onnx"
        save_model(model, path, external_data_above=0)
        yield path


def check_model(model: onnx.ModelProto, full_check: bool = False) -> None:
    """onnx.checker on an in-memory model of any size (beyond 1 GiB through a temporary file with external data)."""
    if fits_one_protobuf(model):
        onnx.checker.check_model(model, full_check=full_check)
        return
    with written_to_temporary_folder(model) as path:
        onnx.checker.check_model(str(path), full_check=full_check)
