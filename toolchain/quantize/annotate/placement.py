"""Annotate a BN-folded float graph: which tensors get Q/DQ, with which kind of parameters.

Usage:
    plan = annotate(model, config)        # QuantPlan; nothing in the model is changed
    plan.activations["/layer1/Relu_output_0"]      # ActivationSpec(bits, one_sided, shared_with, constant)
    plan.weights, plan.biases, plan.layers, plan.float_nodes

Rules per op type are in rules.py (target ort-x86, see shared/docs/qdq-conventions.md):
- every data input of a quantized op is quantized; the network input at `input_bits`;
- the output of Conv/Gemm/MatMul/Add is quantized *after* a ReLU/Clip(0, x) that alone reads it, one-sided
  with zero point 0, so onnxruntime drops the activation and fuses the layer; Sigmoid, HardSigmoid and
  Softmax outputs are one-sided too;
- pass-through ops (MaxPool, Slice, Pad, Reshape, Split, Resize, ...) share their input's parameters (own -> shared),
  on every output;
- biases are derived: int32 with scale = input scale x weight scale (derived);
- ops without a rule stay in float and are listed in `float_nodes`;
- integer tensors (shape arithmetic: Shape -> Gather -> Cast -> Div -> Reshape, as torch.onnx exports a
  channel shuffle or a ViT's reshapes) are never quantized: nodes whose data is not float32 are listed in
  `integer_nodes` and left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import onnx
from onnx import helper, numpy_helper

from toolchain.errors import ConfigError
from toolchain.onnxio.graph import tensor_types
from toolchain.quantize.annotate.rules import (
    ALL_INPUTS,
    FLOOR_KEEPING_POOLS,
    FUSIBLE_PRODUCERS,
    GATE_OUTPUTS,
    NON_NEGATIVE_OUTPUTS,
    OUTPUT_FLOORS,
    WEIGHTED_OPS,
    OpRule,
    rule_for,
)
from toolchain.quantize.config import QuantConfig

_T = onnx.TensorProto
_INTEGER_TYPES = {_T.INT8, _T.INT16, _T.INT32, _T.INT64, _T.UINT8, _T.UINT16, _T.UINT32, _T.UINT64, _T.BOOL}


@dataclass(frozen=True)
class ActivationSpec:
    """A tensor to quantize per tensor.

    Attributes:
        bits: activation bits (unsigned, asymmetric).
        one_sided: the tensor is a ReLU/Clip(0, x) output: range [0, hi], zero point 0.
        floor: a known lower bound of the values (HardSwish: -3/8; rules.OUTPUT_FLOORS) that the grid keeps.
        shared_with: reuse this tensor's parameters (pass-through ops); None = own parameters.
        constant: the tensor is an initializer (e.g. a constant Add operand): stored quantized, DQ only.
    """

    tensor: str
    bits: int
    one_sided: bool = False
    shared_with: str | None = None
    constant: bool = False
    floor: float | None = None


@dataclass(frozen=True)
class WeightSpec:
    """A weight quantized symmetric per output channel along `axis`."""

    tensor: str
    node: str
    axis: int
    bits: int


@dataclass(frozen=True)
class BiasSpec:
    """An int32 bias whose scale is derived: scale(activation) x scale(weight), zero point 0."""

    tensor: str
    node: str
    activation: str
    weight: str


@dataclass(frozen=True)
class QuantLayer:
    """A quantized compute node and the tensor where its (possibly activated) output is quantized."""

    node: str
    op_type: str
    output: str
    weight: str | None = None
    activation_node: str | None = None


@dataclass
class QuantPlan:
    """The result of annotation: specs per tensor, the layers, and what stays in float."""

    activations: dict[str, ActivationSpec] = field(default_factory=dict)
    weights: dict[str, WeightSpec] = field(default_factory=dict)
    biases: dict[str, BiasSpec] = field(default_factory=dict)
    layers: list[QuantLayer] = field(default_factory=list)
    float_nodes: list[tuple[str, str]] = field(default_factory=list)  # (node name, op type)
    integer_nodes: list[tuple[str, str]] = field(default_factory=list)  # shape arithmetic, not quantizable

    def root(self, tensor: str) -> str:
        """The tensor whose parameters `tensor` uses (itself unless shared)."""
        while (spec := self.activations[tensor]).shared_with is not None:
            tensor = spec.shared_with
        return tensor


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _clip_min(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> float | None:
    if len(node.input) > 1 and node.input[1]:
        tensor = constants.get(node.input[1])
        return None if tensor is None else float(numpy_helper.to_array(tensor).reshape(-1)[0])
    attrs = _attrs(node)
    return float(attrs["min"]) if "min" in attrs else None


def _is_zero_floor_activation(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> bool:
    return node.op_type == "Relu" or (node.op_type == "Clip" and _clip_min(node, constants) == 0.0)


def _data_inputs(node: onnx.NodeProto, rule: OpRule | None, constants: dict[str, onnx.TensorProto]) -> list[str]:
    """The inputs that carry data (not shapes, axes, pads, bounds, weights or biases)."""
    if rule is None or rule.kind == "shared":
        return [node.input[0]] if node.input and node.input[0] else []
    if node.op_type in WEIGHTED_OPS:  # the activation; for MatMul of two activations both
        return [name for name in node.input[:2] if name and name not in constants]
    positions = range(len(node.input)) if rule.data_inputs is ALL_INPUTS else rule.data_inputs
    names = [node.input[i] for i in positions if i < len(node.input) and node.input[i]]
    return names if rule.constant_inputs else [name for name in names if name not in constants]


def _output_floor(node: onnx.NodeProto, floors: dict[str, float], gates: set[str]) -> float | None:
    """A lower bound of the node's output known from the graph (rules.OUTPUT_FLOORS and what keeps one)."""
    if node.op_type in OUTPUT_FLOORS:
        return OUTPUT_FLOORS[node.op_type]
    if node.op_type in FLOOR_KEEPING_POOLS:
        return floors.get(node.input[0])
    if node.op_type == "Mul" and len(node.input) == 2:
        a, b = node.input
        if a in floors and b in gates:
            return floors[a]
        if b in floors and a in gates:
            return floors[b]
    return None


def _weight_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if _attrs(node).get("transB", 0) else 1
    return 1  # MatMul: B is (K, N); output channels are its columns


def annotate(model: onnx.ModelProto, config: QuantConfig) -> QuantPlan:
    """Build the QuantPlan for a BN-folded, cleaned-up float graph (nodes in topological order)."""
    annotator = _Annotator(model, config)
    for name in annotator.graph_inputs:
        annotator.own(name, config.effective_input_bits)
    for node in model.graph.node:
        annotator.visit(node)
    return annotator.finish()


class _Annotator:
    """The graph facts annotate reads (constants, types, readers, fused activations, requested bits) and the plan
    it fills, one node at a time in graph order."""

    def __init__(self, model: onnx.ModelProto, config: QuantConfig) -> None:
        graph = model.graph
        self.graph, self.config, self.profile = graph, config, config.profile
        self.constants = {init.name: init for init in graph.initializer}  # decoded only where a value is read
        self.types = tensor_types(model)
        self.graph_outputs = {o.name for o in graph.output}
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.constants]
        self.plan = QuantPlan()
        weighted = [n for n in graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in self.constants]
        self.first_last = {weighted[0].name, weighted[-1].name} if config.first_last_8bit and weighted else set()
        self.layer_bits = dict(config.layer_w_bits)
        unknown = sorted(set(self.layer_bits) - {n.name for n in weighted})
        if unknown:
            names = ", ".join(repr(n.name) for n in weighted[:4])
            raise ConfigError(f"layer_w_bits names {', '.join(map(repr, unknown))}, which are not weighted layers of "
                              f"the model (those are {names}, ...: the names in the quantize report's layers)")
        self.last_layer = weighted[-1] if weighted else None
        self.tensor_bits = dict(config.tensor_a_bits)  # an activation allocation's bits, applied where a spec is made
        self.fused = self._fused_activations()
        self.absorbed = {id(activation) for activation in self.fused.values()}
        self.floors: dict[str, float] = {}  # known lower bounds of tensors (HardSwish outputs and what keeps them)
        self.gates: set[str] = set()  # tensors in [0, 1]

    def _fused_activations(self) -> dict[str, onnx.NodeProto]:
        """A Conv/Gemm/MatMul/Add whose output only feeds one ReLU/Clip(0, x) is quantized after that activation."""
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        fused = {}
        for node in self.graph.node:
            if node.op_type in FUSIBLE_PRODUCERS and node.output[0] not in self.graph_outputs:
                users = readers.get(node.output[0], [])
                if len(users) == 1 and _is_zero_floor_activation(users[0], self.constants):
                    fused[node.output[0]] = users[0]
        return fused

    def is_float(self, tensor: str) -> bool:  # unknown types count as float, as every tensor did before types were read
        return self.types.get(tensor, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT

    def own(self, tensor: str, bits: int, one_sided: bool = False, floor: float | None = None) -> None:
        """Give `tensor` parameters of its own (once; the first spec stays)."""
        if tensor not in self.plan.activations:
            self.plan.activations[tensor] = ActivationSpec(tensor, self.tensor_bits.get(tensor, bits), one_sided,
                                                           constant=tensor in self.constants, floor=floor)

    def visit(self, node: onnx.NodeProto) -> None:
        """One node: left in float or integer (no rule, non-float tensors), shared parameters, or a layer."""
        if id(node) in self.absorbed:
            return
        rule = rule_for(node.op_type) if node.domain in ("", "ai.onnx") else None
        data = _data_inputs(node, rule, self.constants)
        if not all(self.is_float(name) for name in (*data, *node.output) if name):
            if all(self.types.get(name) in _INTEGER_TYPES for name in node.output if name):
                self.plan.integer_nodes.append((node.name, node.op_type))
            else:  # a Cast of a shape to float feeding float arithmetic, float16 / double arithmetic: no rule
                self.plan.float_nodes.append((node.name, node.op_type))
            return
        if rule is None or not data:
            self.plan.float_nodes.append((node.name, node.op_type))
            return
        if node.op_type in GATE_OUTPUTS:
            self.gates.add(node.output[0])
        if rule.kind == "shared":
            self._shared(node, data[0])
        else:
            self._layer(node, data)

    def _shared(self, node: onnx.NodeProto, source: str) -> None:
        """A pass-through op (MaxPool, Reshape, ...): its outputs share the parameters of its data input."""
        plan = self.plan
        if source in self.floors:
            self.floors.update({name: self.floors[source] for name in node.output if name})
        self.own(source, self.config.a_bits)
        root = plan.activations[plan.root(source)]  # shared specs copy bits/one_sided for reports only
        for output in (name for name in node.output if name):
            plan.activations[output] = ActivationSpec(output, root.bits, root.one_sided, shared_with=source)

    def _layer(self, node: onnx.NodeProto, data: list[str]) -> None:
        """A computing op: its inputs and output get parameters, its weight and bias their specs."""
        config, plan, constants = self.config, self.plan, self.constants
        for name in data:
            self.own(name, config.a_bits)
        activation = self.fused.get(node.output[0])
        output = activation.output[0] if activation is not None else node.output[0]
        one_sided = (activation is not None or _is_zero_floor_activation(node, constants)
                     or node.op_type in NON_NEGATIVE_OUTPUTS)
        academic_output = config.first_last_8bit and node is self.last_layer
        floor = _output_floor(node, self.floors, self.gates) if activation is None else None
        if floor is not None:
            self.floors[output] = floor
        if not (output in self.graph_outputs and (academic_output or not self.profile.quantize_output)):
            self.own(output, config.a_bits, one_sided, floor)
        weight = None
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in constants:
            weight = node.input[1]
            bits = 8 if node.name in self.first_last else self.layer_bits.get(node.name, config.w_bits)
            plan.weights[weight] = WeightSpec(weight, node.name, _weight_axis(node), bits)
            if (not self.profile.float_bias and len(node.input) > 2 and node.input[2] in constants
                    and len(constants[node.input[2]].dims) == 1):
                plan.biases[node.input[2]] = BiasSpec(node.input[2], node.name, node.input[0], weight)
            if academic_output:
                root = plan.root(node.input[0])
                plan.activations[root] = replace(plan.activations[root], bits=8)
        plan.layers.append(QuantLayer(node.name, node.op_type, output, weight,
                                      activation.name if activation is not None else None))

    def finish(self) -> QuantPlan:
        """The plan, with the explicit-quantization placement applied and the requested tensor bits checked."""
        plan = self.plan
        if self.profile.inputs_only:
            _keep_layer_inputs_only(plan, self.graph, self.constants)
        unknown = sorted(set(self.tensor_bits) - {t for t, spec in plan.activations.items() if spec.shared_with is None})
        if unknown:
            raise ConfigError(f"tensor_a_bits names {', '.join(map(repr, unknown[:3]))}, which the plan does not "
                              "quantize with parameters of its own (the names in the report's mixed_precision activations)")
        return plan


def _keep_layer_inputs_only(plan: QuantPlan, graph: onnx.GraphProto, constants: dict[str, onnx.TensorProto]) -> None:
    """Explicit-quantization placement (TensorRT): Q/DQ only on what the integer layers read.

    Kept: the activation input of each Conv/Gemm/MatMul (both inputs of a MatMul of two activations), and
    the inputs of a two-input Add except one produced directly by a weighted layer (TensorRT fuses that
    layer with the Add and quantizes the other, the skip input). Everything else loses its Q/DQ; a kept
    tensor that shared a pass-through op's input parameters gets its own (the input is no longer quantized).
    """
    producer = {name: node for node in graph.node for name in node.output}
    keep: set[str] = set()
    for node in graph.node:
        if node.op_type in WEIGHTED_OPS:
            keep.update(name for name in node.input[:2] if name and name not in constants and name in plan.activations)
        elif node.op_type == "Add" and len(node.input) == 2 and not set(node.input) & set(constants):
            fused = next((name for name in node.input if name in producer and producer[name].op_type in WEIGHTED_OPS), None)
            keep.update(name for name in node.input if name != fused and name in plan.activations)
    kept = {}
    for tensor in keep:
        spec = plan.activations[tensor]
        if spec.shared_with is not None:
            root = plan.activations[plan.root(tensor)]
            spec = replace(spec, shared_with=None, one_sided=root.one_sided, floor=root.floor)
        kept[tensor] = spec
    plan.activations = {t: kept[t] for t in plan.activations if t in kept}
