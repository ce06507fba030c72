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

import hashlib
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from toolchain.core.atomic import atomic_output
from toolchain.errors import ModelFileError
from toolchain.onnxio.external_data import (
    EXTERNAL_DATA_ABOVE,
    PROTOBUF_LIMIT,
    all_tensors,
    check_model,
    data_files,
    detached_raw_data,
    fits_one_protobuf,
    read_external_data,
    serialized_size,
    write_with_external_data,
    written_to_temporary_folder,
)
from toolchain.onnxio.validate import check_structure

# check_model, fits_one_protobuf, serialized_size and written_to_temporary_folder live in external_data (below
# validate and sessions, which need them); they are re-exported here, where callers look for file handling.
__all__ = ["EXTERNAL_DATA_ABOVE", "PROTOBUF_LIMIT", "atomic_output", "check_model", "fits_one_protobuf", "load_model",
           "model_sha256", "save_model", "serialized_size", "written_to_temporary_folder"]


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
