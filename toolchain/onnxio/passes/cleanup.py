"""Clean-up passes: leave only the real layers in the graph (no shape arithmetic, no Constant/Identity nodes).

Usage:
    run_passes(model, cleanup_passes())

Exporters emit shape-computation subgraphs (Shape -> Gather -> Unsqueeze -> Concat -> Reshape for a
`view(x.size(0), -1)`, ConstantOfShape/Concat/Transpose chains for a `F.pad`, ...). The quantizer and
the inspector must see only the layers that compute on data, so these are folded here. BatchNormalization
is never touched: its statistics are read later, and folding BN into Conv is a separate, later pass.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from toolchain.onnxio.passes.base import GraphPass, PassResult
from toolchain.onnxio.passes.output_types import CompleteOutputTypesPass
from toolchain.onnxio.passes.shape_folding import FoldStaticShapesPass

# Ops whose value depends on more than their inputs, and ops that must stay visible as layers.
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "BatchNormalization"}


def _initializer_names(graph: onnx.GraphProto) -> set[str]:
    return {init.name for init in graph.initializer}


def _consumers_count(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                counts[name] = counts.get(name, 0) + 1
    for out in graph.output:
        counts[out.name] = counts.get(out.name, 0) + 1
    return counts


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


class LiftConstantNodesPass(GraphPass):
    """Constant nodes become initializers of the same name (so folding sees them as constants)."""

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        output_names = {o.name for o in graph.output}
        lifted = [n for n in graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output[0] not in output_names]
        for node in lifted:
            array = _evaluate(node, [])[0]
            graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
            graph.node.remove(node)
        return PassResult(model, bool(lifted))


class FoldConstantsPass(GraphPass):
    """A node whose inputs are all initializers is evaluated once and replaced by its outputs.

    Attributes:
        max_elements: outputs larger than this stay computed (avoids bloating the file with e.g. a big Expand).
    """

    def __init__(self, max_elements: int = 1 << 20) -> None:
        self.max_elements = max_elements

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        constants = {init.name: init for init in graph.initializer}
        output_names = {o.name for o in graph.output}
        folded = False
        for node in list(graph.node):
            if node.op_type in _NEVER_FOLD or node.domain not in ("", "ai.onnx"):
                continue
            if any(name and name not in constants for name in node.input) or any(o in output_names for o in node.output):
                continue
            if not any(node.input) and node.op_type != "ConstantOfShape":
                continue
            inputs = [numpy_helper.to_array(constants[name]) if name else None for name in node.input]
            outputs = _evaluate(node, inputs, opset=_default_opset(model))
            if any(np.asarray(o).size > self.max_elements for o in outputs):
                continue
            for name, value in zip(node.output, outputs):
                if name:
                    tensor = numpy_helper.from_array(np.asarray(value), name)
                    graph.initializer.append(tensor)
                    constants[name] = tensor
            graph.node.remove(node)
            folded = True
        return PassResult(model, folded)


class ReshapeToFlattenPass(GraphPass):
    """Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])) -> Flatten(x, axis=1).

    This is what `x.view(x.size(0), -1)` exports to; with a dynamic batch it cannot be constant-folded.
    """

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        producer = {out: node for node in graph.node for out in node.output}
        constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        changed = False
        for node in list(graph.node):
            if node.op_type != "Reshape" or len(node.input) < 2:
                continue
            if _is_batch_then_minus_one(node.input[1], node.input[0], producer, constants):
                flatten = helper.make_node("Flatten", [node.input[0]], list(node.output), name=node.name, axis=1)
                position = list(graph.node).index(node)
                graph.node.remove(node)
                graph.node.insert(position, flatten)
                changed = True
        return PassResult(model, changed)


def _is_batch_then_minus_one(shape_name: str, data_name: str, producer: dict, constants: dict) -> bool:
    concat = producer.get(shape_name)
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
        return False
    tail = constants.get(concat.input[1])
    if tail is None or tail.reshape(-1).tolist() != [-1]:
        return False
    unsqueeze = producer.get(concat.input[0])
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze":
        return False
    gather = producer.get(unsqueeze.input[0])
    if gather is None or gather.op_type != "Gather":
        return False
    index = constants.get(gather.input[1])
    if index is None or index.reshape(-1).tolist() != [0]:
        return False
    shape = producer.get(gather.input[0])
    return shape is not None and shape.op_type == "Shape" and shape.input[0] == data_name and not shape.attribute


class EliminateIdentityPass(GraphPass):
    """Identity and inference-mode Dropout nodes are bypassed (their consumers read the input directly)."""

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        graph_inputs = {i.name for i in graph.input}
        output_names = {o.name for o in graph.output}
        changed = False
        for node in list(graph.node):
            if node.op_type not in ("Identity", "Dropout") or node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
                continue  # the mask output is used; not a plain pass-through
            source, target = node.input[0], node.output[0]
            if target in output_names:
                if source in graph_inputs or source in output_names or source in _initializer_names(graph):
                    continue
                # Let the producer write the graph output directly.
                graph.node.remove(node)
                for other in graph.node:
                    for i, name in enumerate(other.output):
                        if name == source:
                            other.output[i] = target
                _rename_uses(graph, source, target)
            else:
                graph.node.remove(node)
                _rename_uses(graph, target, source)
            changed = True
        return PassResult(model, changed)


class RemoveUnusedPass(GraphPass):
    """Nodes whose outputs nobody reads, unused initializers and stale value_info entries are removed."""

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        changed = False
        while True:
            counts = _consumers_count(graph)
            dead = [n for n in graph.node if not any(counts.get(o, 0) for o in n.output if o)]
            if not dead:
                break
            for node in dead:
                graph.node.remove(node)
            changed = True
        counts = _consumers_count(graph)
        unused = [init for init in graph.initializer if not counts.get(init.name)]
        for init in unused:
            graph.initializer.remove(init)
        live = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
        stale = [vi for vi in graph.value_info if vi.name not in live]
        for vi in stale:
            graph.value_info.remove(vi)
        return PassResult(model, changed or bool(unused) or bool(stale))


def cleanup_passes() -> list[GraphPass]:
    """The clean-up pipeline in the order it should run."""

    return [LiftConstantNodesPass(), FoldConstantsPass(), ReshapeToFlattenPass(), FoldStaticShapesPass(), EliminateIdentityPass(),
            RemoveUnusedPass(), CompleteOutputTypesPass()]


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def _evaluate(node: onnx.NodeProto, inputs: list, opset: int = 17) -> list[np.ndarray]:
    """Run a single node with onnx's reference evaluator."""
    if node.op_type == "Constant":
        return list(ReferenceEvaluator(helper.make_model(
            helper.make_graph([node], "fold", [], [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.UNDEFINED, None)]),
            opset_imports=[helper.make_opsetid("", opset)],
        )).run(None, {}))
    names = [f"in{i}" if name else "" for i, name in enumerate(node.input)]
    clone = helper.make_node(node.op_type, names, [f"out{i}" for i in range(len(node.output))], domain=node.domain)
    clone.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [clone],
        "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in zip(names, inputs) if n],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in clone.output],
    )
    evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    return list(evaluator.run(None, {n: v for n, v in zip(names, inputs) if n}))
