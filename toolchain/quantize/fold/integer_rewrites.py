"""Rewrites into equivalent ops that integer runtimes have kernels for; run on the float model before annotation.

Usage:
    run_passes(model, integer_rewrite_passes())

- ReduceMean over every spatial axis (`x.mean([2, 3])`: MnasNet, ShuffleNetV2, ConvNeXt pooling) becomes
  GlobalAveragePool (then Flatten when keepdims=0): the same average, and onnxruntime runs
  QLinearGlobalAveragePool where it has no integer ReduceMean.
- HardSigmoid(x) becomes Clip(x * alpha + beta, 0, 1) and HardSwish(x) becomes x * that (MobileNetV3):
  onnxruntime has no integer HardSigmoid/HardSwish and decomposes HardSwish in float itself, while Mul, Add
  and a Clip(0, 1) absorbed by the next QuantizeLinear all run on integers (QLinearMul, QLinearAdd). The
  price is one more 8-bit rounding (of alpha * x) inside the gate. For runtimes with native kernels (QNN,
  OpenVINO) the op is better left whole; `integer_rewrite_passes` is the onnxruntime targets' list.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.onnxio.passes.base import GraphPass, PassResult
from toolchain.onnxio.passes.shape_folding import symbolic_shapes


def _reduce_axes(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> list[int] | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if "axes" in attrs:
        return list(attrs["axes"])
    if len(node.input) > 1 and node.input[1]:
        axes = initializers.get(node.input[1])
        return None if axes is None else [int(a) for a in numpy_helper.to_array(axes).reshape(-1)]
    return None  # every axis: not a spatial pool


class ReduceMeanToGlobalPoolPass(GraphPass):
    """ReduceMean over axes 2..rank-1 -> GlobalAveragePool (+ Flatten when keepdims=0, for a 4-D or 3-D input)."""

    def call(self, model: onnx.ModelProto) -> PassResult:

        graph = model.graph
        candidates = [n for n in graph.node if n.op_type == "ReduceMean" and n.domain in ("", "ai.onnx")]
        if not candidates:
            return PassResult(model, False)
        initializers = {init.name: init for init in graph.initializer}
        shapes, _ = symbolic_shapes(model)
        modified = False
        for node in candidates:
            rank = len(shapes.get(node.input[0], []))
            axes = _reduce_axes(node, initializers)
            if rank < 3 or axes is None or sorted(a % rank for a in axes) != list(range(2, rank)):
                continue
            keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
            index = list(graph.node).index(node)
            graph.node.remove(node)
            if keepdims:
                graph.node.insert(index, helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name))
            else:
                pooled = f"{node.output[0]}_pooled"
                graph.node.insert(index, helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name))
                graph.node.insert(index + 1, helper.make_node("Flatten", [pooled], list(node.output), name=f"{node.name}_flatten", axis=1))
            modified = True
        return PassResult(model, modified)


class DecomposeHardActivationsPass(GraphPass):
    """HardSigmoid -> Mul, Add, Clip(0, 1); HardSwish -> x * HardSigmoid(x) written so (see the module docstring)."""

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        targets = [n for n in graph.node if n.op_type in ("HardSigmoid", "HardSwish") and n.domain in ("", "ai.onnx")]
        for node in targets:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            alpha = float(attrs.get("alpha", 0.2)) if node.op_type == "HardSigmoid" else 1 / 6
            beta = float(attrs.get("beta", 0.5)) if node.op_type == "HardSigmoid" else 0.5
            base, x = node.name or node.output[0], node.input[0]
            names = {k: f"{base}_{k}" for k in ("alpha", "beta", "low", "high", "scaled", "shifted", "gate")}
            for key, value in (("alpha", alpha), ("beta", beta), ("low", 0.0), ("high", 1.0)):
                graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), names[key]))
            gate = names["gate"] if node.op_type == "HardSwish" else node.output[0]
            nodes = [helper.make_node("Mul", [x, names["alpha"]], [names["scaled"]], name=f"{base}_scale"),
                     helper.make_node("Add", [names["scaled"], names["beta"]], [names["shifted"]], name=f"{base}_shift"),
                     helper.make_node("Clip", [names["shifted"], names["low"], names["high"]], [gate], name=f"{base}_clip")]
            if node.op_type == "HardSwish":
                nodes.append(helper.make_node("Mul", [x, gate], list(node.output), name=base))
            index = list(graph.node).index(node)
            graph.node.remove(node)
            for offset, new in enumerate(nodes):
                graph.node.insert(index + offset, new)
        return PassResult(model, bool(targets))


def integer_rewrite_passes(a_bits: int = 8) -> list[GraphPass]:
    """The rewrites for onnxruntime's CPU provider (targets ort-x86) at `a_bits`-bit activations.

    The HardSwish/HardSigmoid decomposition pays for itself only where onnxruntime then runs integer kernels,
    at 8-bit activations; below, every op is emulated in float anyway and the extra roundings would only cost
    accuracy (two more 4-bit tensors per gate), so the ops stay whole.
    """
    passes: list[GraphPass] = [ReduceMeanToGlobalPoolPass()]
    if a_bits >= 8:
        passes.append(DecomposeHardActivationsPass())
    return passes
