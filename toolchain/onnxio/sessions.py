"""onnxruntime sessions for in-memory models of any size.

Usage:
    session = inference_session(model, options)       # CPU provider; bytes below 1 GiB, a temporary folder above
    with exposing(model, ["/conv1/Conv_output_0"]) as probe:   # extra graph outputs, no copy of the model
        session = inference_session(probe, options)

onnxruntime takes a model as serialised bytes, which protobuf cannot produce beyond 2 GiB: larger models
are written with external data to a temporary folder, opened from there, and the folder is removed (the
session has read the weights by then).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import onnx
import onnxruntime as ort
from onnx import helper

from toolchain.onnxio.external_data import fits_one_protobuf, written_to_temporary_folder


def inference_session(model: onnx.ModelProto, options: ort.SessionOptions | None = None,
                      providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> ort.InferenceSession:
    """An InferenceSession of `model` (an onnx.ModelProto held in memory)."""
    options = options or ort.SessionOptions()
    if fits_one_protobuf(model):
        return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
    with written_to_temporary_folder(model) as path:
        return ort.InferenceSession(str(path), options, providers=list(providers))


@contextlib.contextmanager
def exposing(model: onnx.ModelProto, names: list[str]) -> Iterator[onnx.ModelProto]:
    """`model` with the float tensors `names` added as graph outputs for the duration of the block, then restored.

    In place rather than on a copy: a copy of a large model costs its size in memory again. Only float32
    tensors are ever asked for (annotation leaves integer tensors alone), so the outputs are declared FLOAT.
    """
    existing = {o.name for o in model.graph.output}
    added = [n for n in dict.fromkeys(names) if n not in existing]
    count = len(model.graph.output)
    model.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in added)
    try:
        yield model
    finally:
        del model.graph.output[count:]
