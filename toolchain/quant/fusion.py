"""Fusion coverage: what onnxruntime actually runs on integer kernels after its graph optimisation.

Usage:
    fusion = fusion_coverage(qdq_model)      # {"coverage": 1.0, "integer_layers": 20, "float_ops_left": {...}, ...}

The QDQ model is loaded with all graph optimisations, the optimised graph is saved and counted: Conv,
Gemm and MatMul that became QLinearConv / QGemm / QLinearMatMul / MatMulIntegerToFloat run on integers;
what is left as float Conv/Gemm/MatMul/Add, and any Q/DQ beyond one Q per graph input and one DQ per
graph output, is listed in `float_ops_left`.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort

from toolchain.ortsession import inference_session

INTEGER_LAYER_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "ConvInteger", "MatMulInteger"}
FLOAT_LAYER_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
FLOAT_ELEMENTWISE_OPS = {"Add", "Sum", "Mul"}


def fusion_coverage(model: onnx.ModelProto, threads: int = 1) -> dict:
    """Optimise `model` with onnxruntime (CPU) and count integer vs float layers in the result."""
    with tempfile.TemporaryDirectory() as tmp:
        optimized_path = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized_path)
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # the "hardware specific optimizations" notice is expected here
        inference_session(model, options)
        optimized = onnx.load(str(optimized_path))
    counts = Counter(node.op_type for node in optimized.graph.node)
    integer_layers = sum(counts[op] for op in INTEGER_LAYER_OPS)
    float_layers = sum(counts[op] for op in FLOAT_LAYER_OPS)
    expected_q = len([i for i in optimized.graph.input if i.name not in {t.name for t in optimized.graph.initializer}])
    expected_dq = len(optimized.graph.output)
    left = {op: counts[op] for op in sorted(FLOAT_LAYER_OPS | FLOAT_ELEMENTWISE_OPS) if counts[op]}
    stray_q = counts["QuantizeLinear"] - expected_q
    stray_dq = counts["DequantizeLinear"] - expected_dq
    if stray_q > 0:
        left["QuantizeLinear"] = stray_q
    if stray_dq > 0:
        left["DequantizeLinear"] = stray_dq
    total = integer_layers + float_layers
    return {
        "coverage": integer_layers / total if total else 0.0,
        "integer_layers": integer_layers,
        "float_layers": float_layers,
        "float_ops_left": left,
        "optimized_ops": dict(counts.most_common()),
    }
