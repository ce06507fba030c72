"""What the run report says about each model besides accuracy: its size and its speed.

Usage:
    size = parameter_bytes(qdq_proto, report)           # {"weights": ..., "bias": ..., "fp32": ..., "bytes": ...}
    ms = batch1_latency_ms([fp32_path, w8_path], [1, 3, 32, 32], runs=200, threads=2)

Size is counted as the model would be stored at its bit-widths: every weight element at its layer's bits,
every bias at 32 bits; the FP32 figure is the same parameters (BN folded) at 32 bits. The file's own size
is reported beside it: with `low_bit_storage: ort`, 2- and 4-bit weights travel in 4-bit containers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from toolchain.quantize.report_types import QuantReport
from toolchain.runtimes.timing import interleaved_ms

_TYPE_BITS = {onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4,
              onnx.TensorProto.INT16: 16, onnx.TensorProto.UINT16: 16, onnx.TensorProto.INT32: 32}
for _name in ("INT2", "UINT2"):
    if hasattr(onnx.TensorProto, _name):
        _TYPE_BITS[getattr(onnx.TensorProto, _name)] = 2


def parameter_bytes(qdq: onnx.ModelProto, report: QuantReport) -> dict:
    """Bytes of the quantized model's weights at their bits and of its biases, and the FP32 equivalent."""
    initializers = {t.name: t for t in qdq.graph.initializer}
    layer_bits = {layer.node: layer.weight_bits for layer in report.layers if layer.weight_bits}
    consumers: dict[str, list[str]] = {}
    for node in qdq.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    weight_bits = bias_bits = elements = 0
    for node in qdq.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        tensor = initializers[node.input[0]]
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        if count <= 1:
            continue  # a constant's single value (e.g. a shared zero), not a parameter tensor
        if tensor.data_type == onnx.TensorProto.INT32:
            bias_bits += 32 * count
        else:
            bits = next((layer_bits[c] for c in consumers.get(node.output[0], []) if c in layer_bits),
                        _TYPE_BITS.get(tensor.data_type, 8))
            weight_bits += bits * count
        elements += count
    float_bias = sum(int(np.prod(t.dims)) for t in qdq.graph.initializer
                     if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 1 and _feeds_layer(t.name, qdq, layer_bits))
    bias_bits += 32 * float_bias  # targets that keep the bias in float (tensorrt)
    elements += float_bias
    return {"weights": weight_bits // 8, "bias": bias_bits // 8, "bytes": (weight_bits + bias_bits) // 8,
            "fp32": 4 * elements}


def _feeds_layer(name: str, model: onnx.ModelProto, layer_bits: dict[str, int]) -> bool:
    return any(node.name in layer_bits and len(node.input) > 2 and node.input[2] == name for node in model.graph.node)


def batch1_latency_ms(paths: list[Path], shape: list[int], runs: int, threads: int) -> list[float]:
    """Median ms of one batch-1 call of each file in onnxruntime, the files timed in alternating rounds."""

    return list(interleaved_ms("ort", tuple(paths), [1, *shape[1:]], runs, threads=threads))
