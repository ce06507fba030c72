"""Data-free cross-layer equalisation (DFQ, Nagel et al., ICCV 2019) applied to a BN-folded float model, to measure
whether it helps our W8A8 recipe (README "Pretrained ImageNet models": it does not; the toolchain has no CLE pass).

Usage:
    python bench/cle_probe.py /tmp/imagenet_bench/mobilenetv2_imagenet_folded.onnx /tmp/mbv2_cle.onnx
    toolchain evaluate /tmp/mbv2_cle.onnx --data ../shared/datasets/imagenet-sample-500.tar --reference mbv2.onnx
    toolchain quantize /tmp/mbv2_cle.onnx --calib mbv2_dgh64.npz -o /tmp/mbv2_cle_w8a8.onnx

Every Conv A whose output feeds exactly one Conv B (directly or through one ReLU6 Clip) with B dense or
depthwise over A's channels is a pair. Per channel c, s = sqrt(r1 r2) / r2 with r1 = max|W_A[c]| and r2 = B's
largest weight reading channel c; W_A[c], b_A[c] /= s and B's weights reading c *= s, which equalises both to
sqrt(r1 r2). The pairs are swept `--sweeps` times (chains share layers). ReLU6 does not commute with the scaling,
so, as DFQ does for MobileNetV2, a ReLU6 between a scaled pair becomes a ReLU: the float model changes, and the
probe's first measurement is its FP32 accuracy.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def equalise(model: onnx.ModelProto, sweeps: int) -> int:
    """Equalise `model` in place; the number of pairs."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    outputs = {o.name for o in graph.output}

    def read(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float64)

    def write(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    def is_relu6(node: onnx.NodeProto) -> bool:
        if node.op_type != "Clip":
            return False
        return [float(numpy_helper.to_array(inits[t])) if t in inits else None for t in node.input[1:3]] == [0.0, 6.0]

    pairs = []
    for a in graph.node:
        users = consumers[a.output[0]]
        if a.op_type != "Conv" or a.output[0] in outputs or len(users) != 1:
            continue
        mid, b = None, users[0]
        if is_relu6(b) and b.output[0] not in outputs and len(consumers[b.output[0]]) == 1:
            mid, b = b, consumers[b.output[0]][0]
        channels = read(a.input[1]).shape[0]
        if b.op_type == "Conv" and _group(b) in (1, channels):
            pairs.append((a, mid, b))
    for _ in range(sweeps):
        for a, _mid, b in pairs:
            w1, w2 = read(a.input[1]), read(b.input[1])
            c = w1.shape[0]
            depthwise = _group(b) == c and c > 1
            r1 = np.abs(w1.reshape(c, -1)).max(1)
            r2 = np.abs((w2 if depthwise else np.moveaxis(w2, 1, 0)).reshape(c, -1)).max(1)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 * r2) / np.maximum(r2, 1e-30), 1.0)
            write(a.input[1], w1 / s.reshape((c,) + (1,) * (w1.ndim - 1)))
            if len(a.input) > 2 and a.input[2]:
                write(a.input[2], read(a.input[2]) / s)
            shape = (c,) + (1,) * (w2.ndim - 1) if depthwise else (1, c) + (1,) * (w2.ndim - 2)
            write(b.input[1], w2 * s.reshape(shape))
    for _a, mid, _b in pairs:
        if mid is not None:
            mid.op_type = "Relu"
            del mid.input[1:]
    return len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folded", help="BN-folded float model")
    parser.add_argument("output")
    parser.add_argument("--sweeps", type=int, default=8)
    args = parser.parse_args()
    model = onnx.load(args.folded)
    pairs = equalise(model, args.sweeps)
    onnx.save(model, args.output)
    print(f"wrote {args.output}: {pairs} pairs equalised")


if __name__ == "__main__":
    main()
