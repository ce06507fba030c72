"""Read-only views of an ONNX graph: inputs, op histogram, BatchNormalization layers, quantizable layers.

Usage:
    model = load_model("resnet20.onnx")
    summary = summarize(model)             # GraphSummary dataclass; summary.to_dict() for JSON
    image = image_input(model)             # the single NCHW float input, or GraphError

This module does not import torch: it only reads the graph.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
from onnx import numpy_helper, shape_inference

from toolchain.errors import GraphError
from toolchain.onnxio.passes import run_passes
from toolchain.onnxio.passes.cleanup import FoldConstantsPass, LiftConstantNodesPass
from toolchain.onnxio.preprocessing import Preprocessing, read_preprocessing

QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, element type name, and shape (int, symbolic name or None)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]


@dataclass(frozen=True)
class BatchNormLayer:
    """A BatchNormalization node: its name, input tensor and number of channels."""

    node: str
    input: str
    channels: int


@dataclass(frozen=True)
class QuantizableLayer:
    """A layer with a weight the quantizer will quantize."""

    node: str
    op_type: str
    weight: str
    weight_shape: tuple[int, ...]


@dataclass(frozen=True)
class GraphSummary:
    """What `toolchain inspect` shows."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    ops: dict[str, int]
    batchnorm: tuple[BatchNormLayer, ...]
    quantizable: tuple[QuantizableLayer, ...]
    opset: int
    preprocessing: Preprocessing | None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_batchnorm(self) -> int:
        return len(self.batchnorm)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["num_batchnorm"] = self.num_batchnorm
        data["num_nodes"] = sum(self.ops.values())
        data["preprocessing"] = self.preprocessing.to_dict() if self.preprocessing else None
        return data


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor_type = value.type.tensor_type
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type) if tensor_type.elem_type else "UNDEFINED"
    return TensorInfo(value.name, dtype, tuple(dims))


def graph_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """Real inputs (initializers listed as inputs by old exporters are skipped)."""
    initializers = {init.name for init in model.graph.initializer}
    return [_tensor_info(v) for v in model.graph.input if v.name not in initializers]


def _quantizable_layers(model: onnx.ModelProto) -> tuple[QuantizableLayer, ...]:
    """Conv/Gemm/MatMul with a constant weight, also where the file computes the weight from constants (a
    Transpose of an initializer, as torch.onnx writes nn.Linear without constant folding): those are seen
    on a cleaned copy, as the quantizer sees them."""
    graph = model.graph
    produced = {out for node in graph.node for out in node.output}
    weighted = [n for n in graph.node if n.op_type in QUANTIZABLE_OPS and len(n.input) > 1]
    if any(node.input[1] in produced for node in weighted):

        cleaned = onnx.ModelProto()
        cleaned.CopyFrom(model)
        run_passes(cleaned, [LiftConstantNodesPass(), FoldConstantsPass()])
        graph = cleaned.graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    return tuple(
        QuantizableLayer(node.name or node.output[0], node.op_type, node.input[1], shapes[node.input[1]])
        for node in graph.node
        if node.op_type in QUANTIZABLE_OPS and len(node.input) > 1 and node.input[1] in shapes
    )


def summarize(model: onnx.ModelProto) -> GraphSummary:
    """Collect the facts `inspect` reports. Works on any graph; nothing is modified."""
    graph = model.graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    batchnorm = tuple(
        BatchNormLayer(node.name or node.output[0], node.input[0], int(shapes.get(node.input[1], (0,))[0]))
        for node in graph.node if node.op_type == "BatchNormalization"
    )
    quantizable = _quantizable_layers(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    metadata = {p.key: p.value for p in model.metadata_props}
    return GraphSummary(
        inputs=tuple(graph_inputs(model)),
        outputs=tuple(_tensor_info(v) for v in graph.output),
        ops=dict(Counter(node.op_type for node in graph.node).most_common()),
        batchnorm=batchnorm,
        quantizable=quantizable,
        opset=opset,
        preprocessing=read_preprocessing(model),
        metadata=metadata,
    )


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type (onnx.TensorProto.FLOAT, INT64, ...) of every tensor that onnx shape inference can type.

    Tensors it cannot type are absent; callers decide what an unknown type means.
    """

    types = {init.name: init.data_type for init in model.graph.initializer}
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # noqa: BLE001 - inference is best effort on graphs it does not understand
        inferred = model.graph
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types.setdefault(value.name, value.type.tensor_type.elem_type)
    return types


def image_input(model: onnx.ModelProto, source: str = "the model") -> TensorInfo:
    """The model's single image input (float, 4-D NCHW); GraphError otherwise."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise GraphError(f"{source} has {len(inputs)} inputs ({names}); the toolchain handles models with one image input")
    info = inputs[0]
    if info.dtype not in ("FLOAT", "FLOAT16", "DOUBLE") or len(info.shape) != 4:
        raise GraphError(
            f"{source}: input {info.name!r} is {info.dtype} with shape {list(info.shape)}, not an image tensor; "
            "the toolchain needs one float NCHW input (batch, channels, height, width)"
        )
    channels = info.shape[1]
    if isinstance(channels, int) and channels > 4:
        raise GraphError(
            f"{source}: input {info.name!r} has {channels} channels at axis 1 (shape {list(info.shape)}); "
            "an image input must be NCHW with 1 to 4 channels — re-export the model with a channels-first input"
        )
    return info


def constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Every tensor name whose value the graph fixes: initializers, Constant outputs (a `value` tensor) and
    Identity nodes of either, followed in graph order."""
    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = value
        elif node.op_type == "Identity" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
    return constants


def bn_statistics(model: onnx.ModelProto) -> dict[str, tuple[Any, Any]]:
    """Running (mean, var) arrays per BatchNormalization node name, read from the initializers (also through
    the Identity and Constant nodes torch.onnx puts in front of shared or constant tensors)."""
    constants = constant_tensors(model)
    stats = {}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            mean, var = (constants.get(name) for name in node.input[3:5])
            if mean is None or var is None:
                raise GraphError(f"BatchNormalization {node.name!r}: running statistics are not constants")
            stats[node.name or node.output[0]] = (numpy_helper.to_array(mean), numpy_helper.to_array(var))
    return stats
