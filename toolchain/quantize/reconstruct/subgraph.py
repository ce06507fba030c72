"""Cut a sub-model out of an ONNX graph: the nodes that compute `outputs` from `inputs`.

Usage:
    unit = extract(model, inputs=["/layer1/Relu_output_0_dequantized"], outputs=["/layer1/layer1.0/Relu_1_output_0_dequantized"])
    OnnxModule(unit)           # runs just those nodes

Unlike onnx.utils.Extractor this runs no shape inference, so graphs with INT2/INT4 tensors at any opset
cut the same way, and it fails (GraphError) when a needed value is neither an input nor computable.
"""

from __future__ import annotations

import onnx
from onnx import helper

from toolchain.errors import GraphError


def extract(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    graph = model.graph
    producers = {name: index for index, node in enumerate(graph.node) for name in node.output if name}
    initializers = {init.name for init in graph.initializer}
    wanted: set[int] = set()
    stack = list(outputs)
    seen: set[str] = set(inputs)
    while stack:
        name = stack.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in initializers:
            continue
        if name not in producers:
            raise GraphError(f"value {name!r} is needed for {outputs} but is not computed from {inputs}")
        index = producers[name]
        if index not in wanted:
            wanted.add(index)
            stack.extend(graph.node[index].input)
    nodes = [graph.node[i] for i in sorted(wanted)]
    used = {name for node in nodes for name in node.input}
    sub = helper.make_graph(
        nodes, f"{graph.name}_sub",
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in inputs],
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs],
        [init for init in graph.initializer if init.name in used],
    )
    sub_model = helper.make_model(sub, opset_imports=list(model.opset_import))
    sub_model.ir_version = model.ir_version
    return sub_model
