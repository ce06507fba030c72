"""Reconstruction units from the graph alone: the stem, each residual block, the final Gemm/MatMul.

Usage:
    partition = find_units(float_model, plan, image_input, max_unit_layers=8)
    for unit in partition.units: print(unit.kind, unit.input, "->", unit.output, unit.weights)
    partition.notes        # units that fell back to layer-wise reconstruction, and why

A *cut* is a tensor every path from the graph input to the output passes through: in a ResNet the
stem's ReLU output, each block's output after the merge Add+ReLU, the pooled features, the logits.
Inside a residual block there are two live paths, so no cut. A unit runs from one quantized cut to the
next quantized cut and holds at least one weighted layer; nothing depends on node or tensor names. A
unit with more than `max_unit_layers` weighted layers (a long skip connection, a multi-output graph) is
not delimited as a block: each of its weighted layers becomes its own unit (layer-wise, no PD term,
because the FP rest of the network needs values from outside the layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from toolchain.quantize.annotate.placement import WEIGHTED_OPS, QuantPlan


@dataclass(frozen=True)
class Unit:
    """One reconstruction unit: float tensor names at its input and (quantized) output, and its weights.

    `kind` is "layer" (one weighted layer), "block" (several, between two cuts) or "layer-fallback" (a
    layer of a region that could not be delimited; its output does not alone decide the prediction).
    """

    index: int
    kind: str
    input: str
    output: str
    weights: tuple[str, ...]
    nodes: tuple[str, ...]

    @property
    def decides_prediction(self) -> bool:
        """Whether the FP rest of the network depends on this unit's output only (the PD term needs it)."""
        return self.kind != "layer-fallback"

    @property
    def label(self) -> str:
        return f"unit {self.index} ({self.kind}: {self.nodes[0]}{' ..' if len(self.nodes) > 1 else ''})"


@dataclass
class Partition:
    units: list[Unit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def cut_tensors(model: onnx.ModelProto, image_input: str) -> list[str]:
    """Tensors every input-to-output path passes through, in graph order (the input first, the output last)."""
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    outputs = [o.name for o in graph.output]
    remaining: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            if name and name not in constants:
                remaining[name] = remaining.get(name, 0) + 1
    for name in outputs:
        remaining[name] = remaining.get(name, 0) + 1
    live = {image_input}
    cuts = [image_input]
    for node in graph.node:
        for name in node.input:
            if name in remaining and name in live:
                remaining[name] -= 1
                if remaining[name] == 0:
                    live.discard(name)
        live.update(name for name in node.output if remaining.get(name, 0) > 0)
        if len(live) == 1:
            (only,) = live
            if only != cuts[-1]:
                cuts.append(only)
    return cuts


def find_units(model: onnx.ModelProto, plan: QuantPlan, image_input: str, max_unit_layers: int = 8) -> Partition:
    """Partition a BN-folded, annotated float graph (nodes in topological order) into units."""
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    producer = {name: node for node in graph.node for name in node.output}
    position = {node.name: i for i, node in enumerate(graph.node)}
    quantized = {t for t, spec in plan.activations.items() if not spec.constant}
    outputs = [o.name for o in graph.output]
    cuts = cut_tensors(model, image_input) if len(outputs) == 1 else [image_input]
    boundaries = [c for c in cuts[1:] if c in quantized or c in outputs]

    def weighted(node: onnx.NodeProto) -> bool:
        return node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in plan.weights

    partition = Partition()
    regions: list[tuple[str, str, list[onnx.NodeProto]]] = []
    start, taken = image_input, 0
    for boundary in boundaries:
        end = position[producer[boundary].name] + 1 if boundary in producer else taken
        nodes = list(graph.node[taken:end])
        if boundary in outputs or any(weighted(n) for n in nodes):
            regions.append((start, boundary, nodes))
            start, taken = boundary, end
    if taken < len(graph.node):  # what follows the last quantized cut (or everything, when none was found)
        trailing = list(graph.node[taken:])
        if regions and not any(weighted(n) for n in trailing):
            first, _, nodes = regions.pop()
            regions.append((first, outputs[0] if len(outputs) == 1 else "", nodes + trailing))
        else:
            regions.append((start, "", trailing))

    for first, last, nodes in regions:
        layers = [n for n in nodes if weighted(n)]
        if not layers:
            continue
        delimited = bool(last) and first in (quantized | {image_input}) and len(layers) <= max_unit_layers
        if delimited:
            kind = "layer" if len(layers) == 1 else "block"
            partition.units.append(Unit(len(partition.units), kind, first, last,
                                        tuple(n.input[1] for n in layers), tuple(n.name for n in nodes)))
            continue
        why = (f"{len(layers)} weighted layers between two cut points (more than max_unit_layers={max_unit_layers})"
               if last else "no single quantized tensor closes it (several graph outputs?)")
        partition.notes.append(f"region from {layers[0].name!r} to {layers[-1].name!r} is not delimited as a block "
                               f"({why}): reconstructed layer by layer, without the prediction-difference term")
        for layer in layers:
            unit = _layer_unit(layer, plan, len(partition.units), producer, constants)
            if unit is None:
                partition.notes.append(f"layer {layer.name!r} has an unquantized input or output: kept at nearest rounding")
            else:
                partition.units.append(unit)
    return partition


def _layer_unit(layer: onnx.NodeProto, plan: QuantPlan, index: int, producer: dict, constants: set[str]) -> Unit | None:
    spec = next((s for s in plan.layers if s.node == layer.name), None)
    source = layer.input[0]
    if spec is None or spec.output not in plan.activations or source not in plan.activations:
        return None
    nodes = (layer.name,) + ((spec.activation_node,) if spec.activation_node else ())
    return Unit(index, "layer-fallback", source, spec.output, (layer.input[1],), nodes)
