"""Fold each BatchNormalization into the Conv (or Gemm) that feeds it. Run only after BN statistics were read.

Usage:
    stats = bn_statistics(model)          # graph.bn_statistics: read them first, folding destroys them
    result = FoldBatchNormPass()(model)   # in place; result.modified
    StandaloneBatchNormToConvPass()(model)  # then: the BNs no layer absorbed become depthwise 1x1 Convs

W' = W * g / sqrt(v + eps) per output channel and b' = (b - m) * g / sqrt(v + eps) + beta. A BN whose
producer is not a Conv/Gemm with its own constant weight, or whose producer output has other readers,
is not folded; the second pass turns it into a per-channel affine layer of its own.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.onnxio.passes.base import GraphPass, PassResult
from toolchain.onnxio.passes.shape_folding import symbolic_shapes


class FoldBatchNormPass(GraphPass):
    """Conv/Gemm -> BatchNormalization becomes one Conv/Gemm with rescaled weights and a bias."""

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        initializers = {init.name: init for init in graph.initializer}
        producers = {out: node for node in graph.node for out in node.output}
        readers: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                readers[name] = readers.get(name, 0) + 1
        graph_outputs = {o.name for o in graph.output}
        folded = False
        for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
            layer = producers.get(bn.input[0])
            if layer is None or not _foldable(layer, bn, initializers, readers, graph_outputs):
                continue
            _fold(graph, layer, bn, initializers)
            graph.node.remove(bn)
            folded = True
        if folded:
            _drop_unused_initializers(graph)
        return PassResult(model, folded)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """The BN parameters the rewrite no longer reads."""
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _foldable(layer, bn, initializers, readers, graph_outputs) -> bool:
    if layer is None or layer.op_type not in ("Conv", "Gemm") or (len(bn.output) > 1 and any(bn.output[1:])):
        return False
    if readers.get(layer.output[0], 0) != 1 or layer.output[0] in graph_outputs:
        return False
    if any(name not in initializers for name in bn.input[1:5]):
        return False
    weight = layer.input[1]
    if weight not in initializers or readers.get(weight, 0) != 1:
        return False
    if layer.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in layer.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return False
    return len(layer.input) < 3 or not layer.input[2] or (layer.input[2] in initializers and readers.get(layer.input[2], 0) == 1)


def _fold(graph: onnx.GraphProto, layer: onnx.NodeProto, bn: onnx.NodeProto, initializers: dict) -> None:
    gamma, beta, mean, var = (numpy_helper.to_array(initializers[n]).astype(np.float64) for n in bn.input[1:5])
    epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    factor = gamma / np.sqrt(var + epsilon)
    weight = numpy_helper.to_array(initializers[layer.input[1]]).astype(np.float64)
    if layer.op_type == "Conv":
        weight = weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    else:  # Gemm: output channels are rows of B when transB=1, columns otherwise
        trans_b = next((a.i for a in layer.attribute if a.name == "transB"), 0)
        weight = weight * (factor[:, None] if trans_b else factor[None, :])
    has_bias = len(layer.input) > 2 and bool(layer.input[2])
    bias = numpy_helper.to_array(initializers[layer.input[2]]).astype(np.float64) if has_bias else np.zeros_like(mean)
    bias = (bias - mean) * factor + beta
    _replace_initializer(graph, initializers, layer.input[1], weight.astype(np.float32))
    bias_name = layer.input[2] if has_bias else f"{layer.name or layer.output[0]}.bias"
    if has_bias:
        _replace_initializer(graph, initializers, bias_name, bias.astype(np.float32))
    else:
        tensor = numpy_helper.from_array(bias.astype(np.float32), bias_name)
        graph.initializer.append(tensor)
        initializers[bias_name] = tensor
        while len(layer.input) < 3:
            layer.input.append("")
        layer.input[2] = bias_name
    layer.output[0] = bn.output[0]  # the layer now produces what the BN produced: consumers are unchanged


def _replace_initializer(graph: onnx.GraphProto, initializers: dict, name: str, array: np.ndarray) -> None:
    tensor = numpy_helper.from_array(array, name)
    initializers[name].CopyFrom(tensor)


class StandaloneBatchNormToConvPass(GraphPass):
    """A BatchNormalization that no Conv/Gemm absorbed (DenseNet's pre-activation BN, a BN after a pool or an
    Add) becomes a depthwise 1x1 Conv with the same per-channel affine map, w = g / sqrt(v + eps) and
    b = beta - m * w: a layer the quantizer quantizes per channel and onnxruntime runs as QLinearConv, where a
    BatchNormalization would run in float. Needs the input's rank (from shape inference); a BN whose rank is
    unknown or below 3 is left as it is.
    """

    def call(self, model: onnx.ModelProto) -> PassResult:

        graph = model.graph
        initializers = {init.name: init for init in graph.initializer}
        standalone = [n for n in graph.node if n.op_type == "BatchNormalization" and all(i in initializers for i in n.input[1:5])
                      and not any(n.output[1:])]
        if not standalone:
            return PassResult(model, False)
        shapes, _ = symbolic_shapes(model)
        converted = False
        for bn in standalone:
            rank = len(shapes.get(bn.input[0], []))
            if rank < 3:
                continue
            gamma, beta, mean, var = (numpy_helper.to_array(initializers[n]).astype(np.float64) for n in bn.input[1:5])
            epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            factor = gamma / np.sqrt(var + epsilon)
            channels = factor.size
            base = bn.name or bn.output[0]
            weight = numpy_helper.from_array(factor.reshape(channels, 1, *([1] * (rank - 2))).astype(np.float32), f"{base}.weight")
            bias = numpy_helper.from_array((beta - mean * factor).astype(np.float32), f"{base}.bias")
            graph.initializer.extend([weight, bias])
            conv = helper.make_node("Conv", [bn.input[0], weight.name, bias.name], [bn.output[0]], name=bn.name,
                                    group=channels, kernel_shape=[1] * (rank - 2))
            index = list(graph.node).index(bn)
            graph.node.remove(bn)
            graph.node.insert(index, conv)
            converted = True
        if converted:
            _drop_unused_initializers(graph)
        return PassResult(model, converted)
