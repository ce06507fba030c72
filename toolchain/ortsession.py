"""onnxruntime sessions for in-memory models of any size.

Usage:
    session = inference_session(model, options)       # CPU provider; bytes below 1 GiB, a temporary folder above

onnxruntime takes a model as serialised bytes, which protobuf cannot produce beyond 2 GiB: larger models
are written with external data to a temporary folder, opened from there, and the folder is removed (the
session has read the weights by then).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from toolchain.modelio import fits_one_protobuf, save_model


def inference_session(model: onnx.ModelProto, options: ort.SessionOptions | None = None,
                      providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> ort.InferenceSession:
    """An InferenceSession of `model` (an onnx.ModelProto held in memory)."""
    options = options or ort.SessionOptions()
    if fits_one_protobuf(model):
        return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
    with tempfile.TemporaryDirectory(prefix="toolchain-ort-") as folder:
        path = Path(folder) / "model.onnx"
        save_model(model, path, external_data_above=0)
        return ort.InferenceSession(str(path), options, providers=list(providers))
