"""OpenVINO (CPU plugin) as a RuntimeSession, and the precision it runs each layer in.

Usage:
    session = open_session("r20_w8a8.onnx", threads=2)
    logits = session.run(batch)
    coverage("r20_w8a8.onnx")     # {"coverage": 1.0, "layers": {"Convolution u8": 19, ...}, "float_layers": [...]}

OpenVINO reads each Q -> DQ pair as a FakeQuantize; its low-precision transformations then move the
dequantisation through the layers and run them on integers. `compiled.get_runtime_model()` reports, per
executed layer, its `layerType` and `runtimePrecision`: the coverage is the share of compute layers
(Convolution, FullyConnected, MatMul, Eltwise, Reduce, Pooling, ...) whose precision is an integer type.
The network input's FakeQuantize and the output's dequantisation arithmetic (Subtract/Multiply on the
graph output) are the model's boundary, counted apart as in runtimes.coverage.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from toolchain.errors import ModelFileError
from toolchain.onnxio import qdq_names
from toolchain.runtimes import missing_runtime

COMPUTE_LAYERS = {"Convolution", "Deconvolution", "FullyConnected", "MatMul", "Eltwise", "Subgraph", "Reduce", "Pooling",
                  "Interpolate", "MVN", "Softmax", "Math", "Multiply"}
INTEGER_PRECISIONS = {"u8", "i8", "u16", "i16", "u4", "i4", "u2", "i2"}


def _openvino():
    try:
        import openvino  # optional package (.[openvino]): imported only when this runtime is asked for
    except ImportError:
        raise missing_runtime("openvino", "openvino") from None
    return openvino


def _compile(path: str | os.PathLike[str], threads: int, precision: str | None = None):
    """`precision`: OpenVINO's INFERENCE_PRECISION_HINT (e.g. "f32"); None = its default, which runs float
    layers in bf16 on CPUs with AVX-512 bf16 or AMX."""
    ov = _openvino()
    core = ov.Core()
    try:
        model = core.read_model(os.fspath(path))
    except RuntimeError as err:
        raise ModelFileError(f"{path}: OpenVINO cannot read it ({str(err).splitlines()[0]})") from None
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    return core.compile_model(model, "CPU", config), model


class OpenVinoSession:
    def __init__(self, path: str | os.PathLike[str], threads: int, precision: str | None = None) -> None:
        self.compiled, model = _compile(path, threads, precision)
        first = model.inputs[0]
        self.input_name = first.get_any_name()
        self.input_shape = [d.get_length() if d.is_static else None for d in first.get_partial_shape()]
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.outputs[0]

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(self.request.infer({0: np.ascontiguousarray(inputs)})[self.output]).copy()


def open_session(path: str | os.PathLike[str], threads: int, precision: str | None = None) -> OpenVinoSession:
    return OpenVinoSession(path, threads, precision)


def coverage(path: str | os.PathLike[str], threads: int) -> dict:
    compiled, model = _compile(path, threads)
    boundary_names = {o.get_any_name() for o in model.outputs} | {qdq_names.quantize_node(i.get_any_name()) for i in model.inputs}
    counts: Counter = Counter()
    float_layers, boundary = [], 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        if kind not in COMPUTE_LAYERS:
            continue
        originals = set(info["originalLayersNames"].astype(str).split(",")) if "originalLayersNames" in info else set()
        if precision not in INTEGER_PRECISIONS and kind in ("Eltwise", "Subgraph") and originals & boundary_names:
            boundary += 1  # the output's dequantisation (or the input's quantisation) arithmetic
            continue
        counts[f"{kind} {precision}"] += 1
        if precision not in INTEGER_PRECISIONS:
            float_layers.append({"type": kind, "precision": precision, "name": op.get_friendly_name()})
    total = sum(counts.values())
    return {"runtime": "openvino", "version": _openvino().__version__,
            "coverage": (total - len(float_layers)) / total if total else 0.0,
            "layers": dict(sorted(counts.items())), "float_layers": float_layers, "boundary_layers": boundary}
