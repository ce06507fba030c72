"""ONNX external data: tensors whose bytes live in a side file, read safely and written atomically.

Usage:
    tensors_with_external_data(model)             # the TensorProtos that point at side files
    read_external_data(model, folder, source)     # checks every location first, then loads the bytes in place
    write_with_external_data(model, path)         # NAME.onnx + NAME.onnx.<hash>.data, both or neither

Reading refuses, before anything is read, a location that is absolute, climbs out of the model's folder
(`..`, or a symbolic link that leads elsewhere), names a missing file, or an offset/length outside it: an
ONNX file must not make the toolchain read arbitrary files (`../../../etc/hostname`).

Writing puts every large tensor (>= 1 KiB) into one data file whose name carries a hash of its content,
renamed into place before the model: a model file on disk therefore always has its data beside it, and
the previous version's data file is removed only after the new model replaced the old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import EncodeError
from onnx import helper

from toolchain.core.atomic import atomic_output, default_file_mode, remove_stale_temporaries
from toolchain.errors import ModelFileError

EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay in the model file (as onnx's own writer does)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers, sparse initializers, node attributes, subgraphs."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t


@contextlib.contextmanager
def detached_raw_data(tensors: Sequence[onnx.TensorProto]) -> Iterator[list[bytes]]:
    """The tensors' raw bytes, taken out of them for the block (to copy, hash or write a model without its weights)
    and put back after, field for field; tensors without raw_data are passed over."""
    tensors = [t for t in tensors if t.HasField("raw_data")]
    saved = [(t.raw_data, t.data_location if t.HasField("data_location") else None) for t in tensors]
    for tensor in tensors:
        tensor.ClearField("raw_data")
    try:
        yield [data for data, _ in saved]
    finally:
        for tensor, (data, location) in zip(tensors, saved):
            tensor.ClearField("external_data")
            tensor.ClearField("data_location")
            if location is not None:
                tensor.data_location = location
            tensor.raw_data = data


def tensors_with_external_data(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]


SUB_BYTE_BITS = {getattr(onnx.TensorProto, name): bits for name, bits in
                  (("INT4", 4), ("UINT4", 4), ("INT2", 2), ("UINT2", 2)) if hasattr(onnx.TensorProto, name)}


def expected_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor of this type and shape occupies in raw form (None for strings / unknown types)."""
    count = int(np.prod(tensor.dims, dtype=np.int64)) if len(tensor.dims) else 1
    if tensor.data_type in SUB_BYTE_BITS:
        return (count * SUB_BYTE_BITS[tensor.data_type] + 7) // 8
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, ValueError, TypeError):
        return None
    return None if dtype == np.dtype(object) else count * dtype.itemsize


def _location(tensor: onnx.TensorProto, folder: Path, source: str) -> tuple[Path, int, int | None]:
    """The checked (file, offset, length) of one external tensor; ModelFileError naming the tensor otherwise."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    name = tensor.name or "(unnamed)"
    location = info.get("location", "")
    if not location:
        raise ModelFileError(f"{source}: tensor {name!r} is marked external but has no 'location'; re-export the model")
    relative = Path(location)
    if relative.is_absolute() or location.startswith(("/", "\\")) or ".." in relative.parts or ":" in location:
        raise ModelFileError(f"{source}: tensor {name!r} points its external data at {location!r}, outside the model's "
                             "folder; refused. Keep the data file beside the model with a plain relative name")
    root = folder.resolve()
    target = (folder / relative).resolve()
    if root != target and root not in target.parents:
        raise ModelFileError(f"{source}: tensor {name!r} points its external data at {location!r}, which leads to {target}, "
                             "outside the model's folder (a symbolic link?); refused. Copy the data file beside the model")
    if not target.is_file():
        raise ModelFileError(f"{source}: the external data file {location!r} of tensor {name!r} is missing; copy it into "
                             f"{folder} beside the model")
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError as err:
        raise ModelFileError(f"{source}: tensor {name!r} has a non-integer external data offset/length; re-export the model") from err
    size = target.stat().st_size
    end = offset + length if length is not None else size
    if offset < 0 or (length is not None and length < 0) or end > size:
        raise ModelFileError(f"{source}: tensor {name!r} reads bytes {offset}..{end} of {location!r}, which has {size}; the data "
                             "file is truncated or belongs to another model")
    expected = expected_bytes(tensor)
    if expected is not None and end - offset != expected:
        raise ModelFileError(f"{source}: tensor {name!r} of shape {list(tensor.dims)} needs {expected} bytes but its external "
                             f"data in {location!r} has {end - offset}; the data file belongs to another model or is damaged")
    return target, offset, length


def read_external_data(model: onnx.ModelProto, folder: Path, source: str) -> None:
    """Check every external location of `model` (relative to `folder`), then load the bytes into the tensors."""
    external = tensors_with_external_data(model)
    locations = [_location(tensor, folder, source) for tensor in external]  # all checked before any read
    for tensor, (target, offset, length) in zip(external, locations):
        with open(target, "rb") as handle:
            handle.seek(offset)
            data = handle.read() if length is None else handle.read(length)
        tensor.raw_data = data
        tensor.ClearField("external_data")
        tensor.ClearField("data_location")  # as if it had always been stored inline


def data_files(path: Path) -> list[Path]:
    """The data files this module wrote for `path` (NAME.<16 hex>.data); other files are never touched."""
    return [p for p in path.parent.glob(f"{path.name}.*.data")
            if len(stem := p.name[len(path.name) + 1 : -len(".data")]) == 16 and all(c in "0123456789abcdef" for c in stem)]


def write_with_external_data(model: onnx.ModelProto, path: Path) -> Path:
    """Write `model` to `path` with its large tensors in `NAME.<hash>.data` beside it; `model` is left unchanged."""
    large = [t for t in all_tensors(model) if t.HasField("raw_data") and len(t.raw_data) >= EXTERNAL_MIN_BYTES]
    digest = hashlib.sha256()
    offsets: list[tuple[int, int]] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    data_tmp = path.with_name(f".{path.name}.{os.getpid()}.data.tmp")  # a name remove_stale_temporaries knows
    try:
        with open(data_tmp, "wb") as handle:
            position = 0
            for tensor in large:
                chunk = tensor.raw_data
                handle.write(chunk)
                digest.update(chunk)
                offsets.append((position, len(chunk)))
                position += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(data_tmp, default_file_mode())
        final_data = path.with_name(f"{path.name}.{digest.hexdigest()[:16]}.data")
        os.replace(data_tmp, final_data)  # atomic; nothing refers to it until the model below replaces the old one
    finally:
        data_tmp.unlink(missing_ok=True)
    with detached_raw_data(large):
        for tensor, (offset, length) in zip(large, offsets):
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", final_data.name), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
        with atomic_output(path) as model_tmp:
            model_tmp.write_bytes(model.SerializeToString())
    for stale in data_files(path):  # older versions' data, orphans of killed writes
        if stale != final_data:
            stale.unlink(missing_ok=True)
    return final_data


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


@contextlib.contextmanager
def written_to_temporary_folder(model: onnx.ModelProto) -> Iterator[Path]:
    """`model` saved with external data in a temporary folder, for tools that take a path (onnx.checker,
    onnxruntime) when it is too large to hand over as bytes; the folder is removed after the block."""
    with tempfile.TemporaryDirectory(prefix="toolchain-") as folder:
        path = Path(folder) / "model.onnx"
        write_with_external_data(model, path)
        yield path


def check_model(model: onnx.ModelProto, full_check: bool = False) -> None:
    """onnx.checker on an in-memory model of any size (beyond 1 GiB through a temporary file with external data)."""
    if fits_one_protobuf(model):
        onnx.checker.check_model(model, full_check=full_check)
        return
    with written_to_temporary_folder(model) as path:
        onnx.checker.check_model(str(path), full_check=full_check)
