"""Integer coverage: what onnxruntime actually runs on integer kernels after its graph optimisation.

Usage:
    fusion = fusion_coverage(qdq_model)   # a FusionReport
    fusion.coverage          # share of compute ops on integer kernels (1.0 only when nothing computes in float)
    fusion.mac_coverage      # share of the multiply-accumulates of Conv/Gemm/MatMul on integer kernels
    fusion.float_ops         # [{"op_type": "HardSwish", "name": "/features/0/act/HardSwish"}, ...]
    fusion.fully_integer     # no float op, one Q per graph input, one DQ per graph output

The QDQ model is loaded with all graph optimisations and the optimised graph saved and read back. Every
node is classed by the element type it produces, propagated from the graph's inputs and initializers:
- integer ops produce 8/16-bit integers (QLinearConv, QGemm, QLinearAdd, QLinearSigmoid, and the MaxPool,
  Reshape, Transpose, ... that onnxruntime moved onto the integers) or compute on them (MatMulIntegerToFloat);
- float ops produce float (a HardSwish or LayerNormalization between DQ and Q, a Conv left unfused);
- shape ops produce int64/int32/bool (shape arithmetic of a dynamic batch): not compute, counted apart.
QuantizeLinear / DequantizeLinear beyond one Q per graph input and one DQ per graph output mark float
regions and are counted as `stray_q` / `stray_dq`. MACs are computed on the QDQ model (shape inference)
and attributed through node names, which onnxruntime keeps on the nodes it leaves in float.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from toolchain.errors import ConfigError
from toolchain.onnxio.sessions import inference_session

INTEGER_LAYER_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "ConvInteger", "MatMulInteger"}
FLOAT_LAYER_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
_T = onnx.TensorProto
_QUANTIZED_TYPES = {_T.INT8, _T.UINT8, _T.INT16, _T.UINT16, _T.INT4, _T.UINT4, _T.INT2, _T.UINT2}
_FLOAT_TYPES = {_T.FLOAT, _T.FLOAT16, _T.DOUBLE, _T.BFLOAT16}
_BOOL_OUTPUTS = {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "IsNaN", "IsInf"}
_FLOAT_RESULT_OF_INTEGERS = {"DequantizeLinear", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}


def _optimized(model: onnx.ModelProto, threads: int) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        optimized_path = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized_path)
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # the "hardware specific optimizations" notice is expected here
        try:
            inference_session(model, options)
        except Exception as err:
            if "INVALID_GRAPH" in str(err) and _has_native_low_bit_types(model):
                raise ConfigError("onnxruntime 1.32's QDQ fusion turns this file's INT2/INT4/UINT4 tensors next to "
                                  "other widths into an invalid graph (" + " ".join(str(err).split())[:160] + "); "
                                  "use --low-bit-storage ort, which holds the same values in types it loads") from None
            raise
        return onnx.load(str(optimized_path))


def _has_native_low_bit_types(model: onnx.ModelProto) -> bool:
    low = {_T.INT4, _T.UINT4, *(getattr(_T, name) for name in ("INT2", "UINT2") if hasattr(_T, name))}
    return any(t.data_type in low for t in model.graph.initializer)


def _output_type(node: onnx.NodeProto, types: dict[str, int]) -> int | None:
    """The element type `node` produces, from its op and its inputs' types (onnxruntime's own ops included)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "QuantizeLinear":
        zero = types.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return zero or attrs.get("output_dtype") or _T.UINT8
    if op in _FLOAT_RESULT_OF_INTEGERS:
        return _T.FLOAT
    if op == "QGemm" and not (len(node.input) > 7 and node.input[7]):
        return _T.FLOAT  # no output scale: QGemm returns float
    if op.startswith("QLinear") or op == "QGemm":  # their output has the type of the zero points they take
        return next((types[name] for name in node.input if types.get(name) in _QUANTIZED_TYPES), None)
    if op in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin"):
        return _T.INT64
    if op in ("Cast",):
        return attrs.get("to")
    if op in _BOOL_OUTPUTS:
        return _T.BOOL
    if op == "Where":
        return types.get(node.input[1])
    if op in ("ConstantOfShape",):
        value = attrs.get("value")
        return value.data_type if value is not None else _T.FLOAT
    known = [types[name] for name in node.input if name and name in types]
    return known[0] if known else None


def _in_dependency_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes with every producer before its readers (an optimised graph is not always saved in that order)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), list[onnx.NodeProto]()
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:  # a cycle or an unknown input: keep the file order for the rest
            return ordered + pending
        for node in ready:
            available.update(node.output)
        ordered += ready
        pending = [n for n in pending if n not in ready]
    return ordered


def layer_macs(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates per Conv/Gemm/MatMul node name, from shape inference on the QDQ model (batch 1)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # noqa: BLE001 - MACs are best effort; coverage by ops still holds
        return {}
    dims: dict[str, list[int]] = {init.name: list(init.dims) for init in model.graph.initializer}
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims.setdefault(value.name, [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim])
    macs = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.output[0] not in dims:
            continue
        out, b = dims[node.output[0]], dims.get(node.input[1])
        if b is None:
            continue
        if node.op_type == "Conv":
            per_output = int(np.prod(b[1:]))  # Cin/groups x kernel
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            per_output = b[1] if trans_b else b[0]
        else:
            per_output = b[-2] if len(b) >= 2 else b[0]
        macs[node.name] = int(np.prod(out)) * per_output
    return macs


def _layer_of(name: str, macs: dict[str, int]) -> str | None:
    """The QDQ model's layer an optimised node came from: same name, or a fused name built on it."""
    if name in macs:
        return name
    return next((layer for layer in macs if name.startswith(layer)), None)


@dataclass(frozen=True)
class FusionReport:
    """What onnxruntime CPU runs on integer kernels after its graph optimisation (to_dict: the report's `fusion`)."""

    coverage: float  # share of the compute ops on integer kernels
    mac_coverage: float | None  # share of the Conv/Gemm/MatMul MACs on integer kernels (None: no such layer)
    integer_ops: int
    float_ops: list[dict[str, str]]  # {"op_type", "name"} of each op left in float
    shape_ops: int
    integer_layers: int
    float_layers: int
    macs: int
    float_macs: int
    stray_q: int  # QuantizeLinear beyond one per graph input
    stray_dq: int  # DequantizeLinear beyond one per graph output
    float_ops_left: dict[str, int]  # op type -> count, stray Q/DQ included
    fully_integer: bool
    optimized_ops: dict[str, int]  # op type -> count in the optimised graph

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def fusion_coverage(model: onnx.ModelProto, threads: int = 1) -> FusionReport:
    """Optimise `model` with onnxruntime (CPU) and class every node of the result (see the module docstring)."""
    optimized = _optimized(model, threads)
    graph = optimized.graph
    types: dict[str, int] = {init.name: init.data_type for init in graph.initializer}
    for value in graph.input:
        types[value.name] = value.type.tensor_type.elem_type
    integer_ops, float_ops, shape_ops = [], [], 0
    for node in _in_dependency_order(graph):
        produced = _output_type(node, types)
        for name in node.output:
            if name and produced is not None:
                types[name] = produced
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        entry = {"op_type": node.op_type, "name": node.name}
        if node.op_type in INTEGER_LAYER_OPS or produced in _QUANTIZED_TYPES:
            integer_ops.append(entry)
        elif produced in _FLOAT_TYPES:
            float_ops.append(entry)
        else:
            shape_ops += 1
    counts = Counter(node.op_type for node in graph.node)
    initializers = {t.name for t in graph.initializer}
    stray_q = counts["QuantizeLinear"] - len([i for i in graph.input if i.name not in initializers])
    stray_dq = counts["DequantizeLinear"] - len(graph.output)
    macs = layer_macs(model)
    float_macs = sum(macs.get(_layer_of(op["name"], macs) or "", 0) for op in float_ops if op["op_type"] in FLOAT_LAYER_OPS)
    total_macs = sum(macs.values())
    computing = len(integer_ops) + len(float_ops)
    left = dict(sorted(Counter(op["op_type"] for op in float_ops).items()))
    if stray_q > 0:
        left["QuantizeLinear"] = stray_q
    if stray_dq > 0:
        left["DequantizeLinear"] = stray_dq
    return FusionReport(
        coverage=len(integer_ops) / computing if computing else 0.0,
        mac_coverage=(total_macs - float_macs) / total_macs if total_macs else None,
        integer_ops=len(integer_ops),
        float_ops=float_ops,
        shape_ops=shape_ops,
        integer_layers=sum(counts[op] for op in INTEGER_LAYER_OPS),
        float_layers=sum(counts[op] for op in FLOAT_LAYER_OPS),
        macs=total_macs,
        float_macs=float_macs,
        stray_q=max(stray_q, 0),
        stray_dq=max(stray_dq, 0),
        float_ops_left=left,
        fully_integer=not float_ops and stray_q <= 0 and stray_dq <= 0,
        optimized_ops=dict(counts.most_common()),
    )


def float_ops_text(fusion: FusionReport | Mapping[str, Any], limit: int = 6) -> str:
    """'HardSwish x7, LayerNormalization x5, ...' (or 'none') for summaries; also takes a stored report's `fusion`
    mapping (or a bench row with `float_ops_left`)."""
    left = fusion.float_ops_left if isinstance(fusion, FusionReport) else fusion.get("float_ops_left", {})
    parts = [f"{op} x{n}" for op, n in left.items()]
    return ", ".join(parts[:limit]) + (f", ... ({len(parts) - limit} more types)" if len(parts) > limit else "") if parts else "none"
