"""Fold zero Pads into the Convs that read them: TensorFlow's asymmetric "SAME" padding as Conv pads.

Usage:
    FoldZeroPadIntoConvPass()(model)      # Pad(x, [0, 0, t, l, 0, 0, b, r], 0) -> Conv  becomes  Conv(x, pads += [t, l, b, r])

Models trained in TensorFlow (EfficientNet-Lite, MobileNets ported to PyTorch) pad stride-2 convolutions
asymmetrically with an explicit Pad. onnxruntime runs a Pad between Q/DQ pairs in float (EfficientNet-Lite0
W8A8 left 5 Pads, 5 QuantizeLinear and 5 DequantizeLinear on float kernels); a Conv's own pads may be
asymmetric and pad with the input's zero point, which is exactly a zero Pad. So a constant-mode Pad of zeros
on the spatial axes only, read by Convs alone, becomes part of those Convs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.onnxio.passes.base import GraphPass, PassResult


class FoldZeroPadIntoConvPass(GraphPass):
    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        constants = {init.name: init for init in graph.initializer}
        outputs = {o.name for o in graph.output}
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        folded = []
        for pad in graph.node:
            spatial = _zero_spatial_pads(pad, constants)
            convs = readers.get(pad.output[0], []) if spatial is not None else []
            if spatial is None or not convs or pad.output[0] in outputs \
                    or not all(_foldable_reader(c, pad.output[0]) for c in convs):
                continue
            for conv in convs:
                own = _attribute(conv, "pads", [0] * len(spatial))
                _set_ints(conv, "pads", [a + b for a, b in zip(own, spatial)])
                conv.input[0] = pad.input[0]
            folded.append(pad)
        for pad in folded:
            graph.node.remove(pad)
        return PassResult(model, bool(folded))


def _zero_spatial_pads(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> list[int] | None:
    """A 4-D constant-mode zero Pad's spatial pads in Conv order [top, left, bottom, right], else None."""
    if node.op_type != "Pad" or node.domain not in ("", "ai.onnx"):
        return None
    if _attribute(node, "mode", b"constant") not in (b"constant", "constant"):
        return None
    if len(node.input) > 3 and node.input[3]:
        return None  # explicit axes: rare, left alone
    if len(node.input) > 2 and node.input[2]:
        value = constants.get(node.input[2])
        if value is None or np.any(numpy_helper.to_array(value) != 0):
            return None
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in constants:
            return None
        pads = [int(v) for v in numpy_helper.to_array(constants[node.input[1]]).reshape(-1)]
    else:
        pads = [int(v) for v in _attribute(node, "pads", [])]  # opset < 11
    if len(pads) != 8 or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[4] or pads[5]:
        return None
    return [pads[2], pads[3], pads[6], pads[7]]


def _foldable_reader(node: onnx.NodeProto, tensor: str) -> bool:
    return (node.op_type == "Conv" and node.input[0] == tensor and tensor not in node.input[1:]
            and _attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def _attribute(node: onnx.NodeProto, name: str, default):
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def _set_ints(node: onnx.NodeProto, name: str, values: list[int]) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, values)])
