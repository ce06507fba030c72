"""What OnnxModule does to a graph before it builds its steps: decode attributes, convert initializers, check the
ops, order the nodes.

Usage:
    check_supported(nodes)                          # GraphError naming the first node torch cannot run
    order = topological_order(graph, known_names)   # producers before consumers; file order among the ready ones
    attrs = node_attributes(node)                   # {name: decoded value}
    tensor = to_tensor(array, "initializer 'w'")    # sub-byte ONNX types in their torch holders
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from toolchain.errors import GraphError
from toolchain.executor.ops import SUB_BYTE_HOLDERS
from toolchain.executor.registry import op_spec, supported_ops

ONNX_DOMAINS = ("", "ai.onnx")


def node_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        attrs[attribute.name] = value
    return attrs


def to_tensor(array: np.ndarray, what: str) -> torch.Tensor:
    array = np.asarray(array)
    holder = SUB_BYTE_HOLDERS.get(array.dtype)
    if holder is not None:  # INT4/UINT4/INT2/UINT2 (ml_dtypes arrays): torch has no such types
        array = array.astype(holder)
    try:
        return torch.from_numpy(np.array(array))  # a writable copy: ONNX arrays may be read-only views
    except TypeError as err:
        raise GraphError(f"{what} has dtype {array.dtype}, which torch cannot hold; use a numeric type") from err


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ONNX_DOMAINS:
            return int(entry.version)
    raise GraphError("the model imports no default ('ai.onnx') opset; re-export it with opset >= 17")


def topological_order(graph: onnx.GraphProto, known: set[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is produced before use; file order among the ready ones."""
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    consumers: list[list[int]] = [[] for _ in graph.node]
    waiting = [0] * len(graph.node)  # number of distinct producing nodes not yet placed
    for index, node in enumerate(graph.node):
        missing = [name for name in node.input if name and name not in known and name not in producers]
        if missing:
            raise GraphError(f"{node.op_type} node '{node.name}': input '{missing[0]}' is neither a graph input, "
                             "an initializer nor any node's output; fix the graph")
        for producer in {producers[name] for name in node.input if name in producers}:
            consumers[producer].append(index)
            waiting[index] += 1
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for consumer in consumers[index]:
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                heapq.heappush(ready, consumer)
    if len(order) < len(graph.node):
        node = graph.node[next(i for i, count in enumerate(waiting) if count > 0)]
        raise GraphError(f"{node.op_type} node '{node.name}' is part of a cycle; an ONNX graph must be acyclic")
    return [graph.node[i] for i in order]


def check_supported(nodes: list[onnx.NodeProto]) -> None:
    for node in nodes:
        if node.domain not in ONNX_DOMAINS:
            raise GraphError(f"node '{node.name}' ({node.op_type}) is in domain '{node.domain}'; the torch executor "
                             f"runs only ai.onnx ops: {', '.join(supported_ops())}")
        if op_spec(node.op_type) is None:
            raise GraphError(f"{node.op_type} node '{node.name}' is not supported by the torch executor; replace it, "
                             f"or add a kernel with toolchain.executor.register; supported ops: {', '.join(supported_ops())}")
