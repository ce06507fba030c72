"""Write Q/DQ into the graph: integer weights and biases behind DequantizeLinear, Q->DQ on activations.

Usage:
    qdq_model = materialize(float_model, plan, activation_params, weight_params)

`activation_params` is keyed by the root tensor of each activation (shared tensors reuse their root's
scale and zero-point initializers); `weight_params` by weight tensor. Original node names are kept, so
parameters found later (reconstruction) can be written back by name. New names derive from the tensor, as
quantize.qdq_names says (`<t>_quantized`, `<t>_dequantized`, `<t>_scale`, ...).
A graph output keeps its name: it becomes the output of the last DequantizeLinear, so the last layer
is followed by Q->DQ and onnxruntime can fuse it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.errors import GraphError
from toolchain.onnxio import qdq_names
from toolchain.onnxio.external_data import detached_raw_data
from toolchain.onnxio.passes import RemoveUnusedPass
from toolchain.quantize.annotate.placement import QuantPlan
from toolchain.quantize.qparams import BIAS_TYPE, IntType, QParams, storage_type

INT32_MAX = np.iinfo(np.int32).max


def integer_tensor(name: str, values: np.ndarray, qtype: IntType) -> onnx.TensorProto:
    """An initializer of an ONNX integer type, stored as raw bytes (INT4/INT2 packed two/four to a byte).

    Raw bytes, not int32_data: there a negative int8 takes a 10-byte varint, so an INT8 weight would outweigh
    its FP32 original, and tensors outside raw_data cannot move to external data beyond 2 GB.
    """
    dtype = helper.tensor_dtype_to_np_dtype(qtype.onnx_type)
    return numpy_helper.from_array(np.asarray(values).astype(dtype, copy=False), name)


def bias_params(activation: QParams, weight: QParams) -> QParams:
    """int32 bias parameters: scale = s_x * s_w per channel, zero point 0."""
    scale = (activation.scale.astype(np.float32) * weight.scale.astype(np.float32)).astype(np.float32)
    return QParams(scale, np.zeros(scale.shape, np.int64), BIAS_TYPE, axis=0)


def guard_bias_overflow(activation: QParams, weight: QParams, bias: np.ndarray) -> QParams:
    """Raise the weight scale of channels whose bias would not fit int32 (as onnxruntime does); rare."""
    needed = np.abs(bias.astype(np.float64)) / (float(activation.scale) * INT32_MAX)
    if np.all(weight.scale >= needed):
        return weight
    scale = np.maximum(weight.scale, needed.astype(np.float32) * np.float32(1.0001)).astype(np.float32)
    return QParams(scale, weight.zero_point, weight.qtype, weight.axis, weight.qmin)


class _Builder:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.initializers = {init.name: init for init in self.graph.initializer}
        self.new_nodes: list[onnx.NodeProto] = []

    def add_initializer(self, tensor: onnx.TensorProto) -> str:
        if tensor.name not in self.initializers:
            self.graph.initializer.append(tensor)
            self.initializers[tensor.name] = tensor
        return tensor.name

    def qparam_inputs(self, base: str, params: QParams, storage: IntType) -> tuple[str, str]:
        scale = self.add_initializer(numpy_helper.from_array(params.scale.astype(np.float32), qdq_names.scale(base)))
        zero = self.add_initializer(integer_tensor(qdq_names.zero_point(base), params.zero_point, storage))
        return scale, zero

    def replace_uses(self, old: str, new: str, skip: onnx.NodeProto | None = None) -> None:
        for node in self.graph.node:
            if node is skip:
                continue
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new

    def dq_node(self, source: str, scale: str, zero: str, output: str, name: str, axis: int | None) -> onnx.NodeProto:
        kwargs: dict[str, Any] = {"axis": axis} if axis is not None else {}
        node = helper.make_node("DequantizeLinear", [source, scale, zero], [output], name=name, **kwargs)
        self.graph.node.append(node)
        return self.graph.node[-1]


def _copy_without(model: onnx.ModelProto, tensors: list[onnx.TensorProto]) -> onnx.ModelProto:
    """A copy of `model` in which `tensors` (the float weights, replaced by integers) hold no data: copying a large
    model's weights only to delete them would cost their size in memory again."""
    copy = onnx.ModelProto()
    with detached_raw_data(tensors):
        copy.CopyFrom(model)
    return copy


def materialize(
    model: onnx.ModelProto,
    plan: QuantPlan,
    activation_params: dict[str, QParams],
    weight_params: dict[str, QParams],
    low_bit_storage: str = "ort",
    weight_integers: dict[str, np.ndarray] | None = None,
    integer_pads: bool = True,
) -> onnx.ModelProto:
    """A new QDQ model; `model` is not modified. `low_bit_storage`: see QuantConfig. `integer_pads`: run 8-bit
    zero Pads on the integers (onnxruntime, OpenVINO); off for QNN, whose HTP takes a Pad only inside DQ -> Pad -> Q.

    `weight_integers` (by weight tensor) replaces nearest rounding with given integers, e.g. the learned
    rounding of reconstruction; biases are always derived from the float bias and the current scales.
    """
    source = {init.name: init for init in model.graph.initializer}
    qdq = _copy_without(model, [source[w] for w in plan.weights])
    builder = _Builder(qdq)
    graph_outputs = {o.name for o in qdq.graph.output}

    for weight, spec in plan.weights.items():
        params = weight_params[weight]
        storage = storage_type(params.qtype, low_bit_storage)
        array = numpy_helper.to_array(source[weight])
        integers = (weight_integers or {}).get(weight)
        integers = params.quantize_compact(array) if integers is None else integers
        builder.add_initializer(integer_tensor(qdq_names.quantized(weight), integers, storage))
        scale, zero = builder.qparam_inputs(weight, params, storage)
        builder.replace_uses(weight, qdq_names.dequantized(weight))
        builder.dq_node(qdq_names.quantized(weight), scale, zero, qdq_names.dequantized(weight), qdq_names.dequantize_node(weight), spec.axis)

    for bias, bias_spec in plan.biases.items():
        array = numpy_helper.to_array(builder.initializers[bias]).astype(np.float32)
        params = bias_params(activation_params[plan.root(bias_spec.activation)], weight_params[bias_spec.weight])
        builder.add_initializer(integer_tensor(qdq_names.quantized(bias), params.quantize(array), BIAS_TYPE))
        scale, zero = builder.qparam_inputs(bias, params, BIAS_TYPE)
        builder.replace_uses(bias, qdq_names.dequantized(bias))
        builder.dq_node(qdq_names.quantized(bias), scale, zero, qdq_names.dequantized(bias), qdq_names.dequantize_node(bias), 0)

    pads = _integer_domain_pads(qdq.graph, plan) if integer_pads else {}
    for tensor, activation in plan.activations.items():
        root = plan.root(tensor)
        params = activation_params[root]
        storage = storage_type(params.qtype, low_bit_storage, activation=True)
        scale, zero = builder.qparam_inputs(root, params, storage)
        if activation.constant:
            array = numpy_helper.to_array(builder.initializers[tensor])
            builder.add_initializer(integer_tensor(qdq_names.quantized(tensor), params.quantize(array), storage))
            builder.replace_uses(tensor, qdq_names.dequantized(tensor))
            builder.dq_node(qdq_names.quantized(tensor), scale, zero, qdq_names.dequantized(tensor), qdq_names.dequantize_node(tensor), None)
            continue
        if tensor in pads:
            assert activation.shared_with is not None, "an integer-domain Pad shares its input's parameters"
            _materialize_integer_pad(builder, pads[tensor], activation.shared_with, tensor, scale, zero)
            continue
        clip = _range_clip(builder, root, params) if storage != params.qtype else None
        _materialize_activation(builder, tensor, scale, zero, tensor in graph_outputs, clip)

    unused = {name for name in plan.weights} | {name for name in plan.biases} | {t for t, s in plan.activations.items() if s.constant}
    for init in [i for i in qdq.graph.initializer if i.name in unused]:
        qdq.graph.initializer.remove(init)
    del qdq.graph.value_info[:]  # shapes of renamed tensors would be stale; runtimes infer them again
    RemoveUnusedPass()(qdq)  # e.g. the DQ of a tensor whose only reader became an integer-domain Pad
    _topological_sort(qdq.graph)
    return qdq


def _range_clip(builder: _Builder, root: str, params: QParams) -> tuple[str, str]:
    """Float bounds of the low-bit grid, for a Clip before a QuantizeLinear into a wider container type."""
    scale, zero = float(params.scale), int(params.zero_point)
    low = np.float32(scale * (params.qtype.qmin - zero))
    high = np.float32(scale * (params.qtype.qmax - zero))
    clip_min, clip_max = qdq_names.clip_bounds(root)
    return (builder.add_initializer(numpy_helper.from_array(np.asarray(low), clip_min)),
            builder.add_initializer(numpy_helper.from_array(np.asarray(high), clip_max)))


def _materialize_activation(builder: _Builder, tensor: str, scale: str, zero: str, is_graph_output: bool,
                            clip: tuple[str, str] | None = None) -> None:
    graph = builder.graph
    if is_graph_output:
        # The producer writes <t>_float; Q -> DQ ends in the graph output's own name.
        source = qdq_names.float_producer_output(tensor)
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == tensor:
                    node.output[i] = source
        if any(i.name == tensor for i in graph.input):
            raise GraphError(f"tensor {tensor!r} is both a graph input and output; the quantizer cannot wrap it")
        dequantized = tensor
    else:
        source, dequantized = tensor, qdq_names.dequantized(tensor)
    quantize_input = source
    if clip is not None:  # values of a low-bit grid held in a wider type: clamp to the low-bit range first
        quantize_input = qdq_names.clipped(tensor)
        graph.node.append(helper.make_node("Clip", [source, *clip], [quantize_input], name=qdq_names.clip_node(tensor)))
    quantize = helper.make_node("QuantizeLinear", [quantize_input, scale, zero], [qdq_names.quantized(tensor)], name=qdq_names.quantize_node(tensor))
    graph.node.append(quantize)
    quantize = graph.node[-1]  # protobuf appends a copy: `skip` below must be the node in the graph
    if not is_graph_output:
        clip_node = graph.node[-2] if clip is not None else None
        for node in graph.node:
            if node is quantize or node is clip_node:
                continue
            for i, name in enumerate(node.input):
                if name == tensor:
                    node.input[i] = dequantized
    builder.dq_node(qdq_names.quantized(tensor), scale, zero, dequantized, qdq_names.dequantize_node(tensor), None)


def _integer_domain_pads(graph: onnx.GraphProto, plan: QuantPlan) -> dict[str, onnx.NodeProto]:
    """8-bit constant-mode Pads whose output shares its input's parameters: they run on the integers.

    onnxruntime drops Q/DQ around Slice, MaxPool, Reshape, ... itself, but not around Pad; padding the
    quantized tensor with the zero point is exact and leaves no float op behind.
    """
    pads = {}
    for node in graph.node:
        if node.op_type != "Pad" or node.output[0] not in plan.activations:
            continue
        spec = plan.activations[node.output[0]]
        mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
        has_value = len(node.input) > 2 and bool(node.input[2])
        if spec.shared_with == node.input[0] and spec.bits == 8 and mode == "constant" and not has_value and len(node.input) <= 3:
            pads[node.output[0]] = node
    return pads


def _materialize_integer_pad(builder: _Builder, pad: onnx.NodeProto, source: str, tensor: str, scale: str, zero: str) -> None:
    pad.input[0] = qdq_names.quantized(source)  # the integers of the input's QuantizeLinear
    while len(pad.input) < 3:
        pad.input.append("")
    pad.input[2] = zero  # pad with the zero point: the integer that means 0.0
    pad.output[0] = qdq_names.quantized(tensor)
    builder.replace_uses(tensor, qdq_names.dequantized(tensor))
    builder.dq_node(qdq_names.quantized(tensor), scale, zero, qdq_names.dequantized(tensor), qdq_names.dequantize_node(tensor), None)


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Kahn's algorithm, keeping the existing order among nodes that are ready."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        remaining = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            names = ", ".join(n.name for n in remaining[:3])
            raise GraphError(f"the quantized graph has a cycle or a missing input around {names}")
        pending = remaining
    del graph.node[:]
    graph.node.extend(ordered)
