"""Where a low-bit QDQ model loses its accuracy: restore one group of quantizers at a time and re-evaluate.

Usage:
    python bench/sensitivity.py /tmp/trained_families/mobilenet_v3_cifar10_dgh_s0_W4A4.onnx \
        /tmp/trained_families/mobilenet_v3_cifar10_folded.onnx --name mobilenet_v3_cifar10_W4A4 --limit 2000

The first model is a QDQ model written by `toolchain quantize` (default "ort" storage: low-bit activations
are a Clip to the low-bit range before a UINT8 QuantizeLinear); the second is the BN-folded float model
it came from (its weights are the float weights restored below; bench/trained_families.py writes both).

Activation quantizers are grouped by role, read from the graph: the op that produces the tensor and the
ops that read it ("Conv→HardSwish" is a conv output quantized before its activation, "HardSigmoid→Mul" an
SE gate). Each group is re-evaluated with 8-bit resolution over the same range (scale / 17, the learned
clipping kept), which isolates rounding from clipping. Weight groups (stem, 1x1, depthwise, SE, head, ...)
are re-evaluated with their float weights. Each group is also evaluated alone: the only one left low-bit,
every other activation at 8 bits (or every other weight in float). Top-1 on the first `--limit` images of `--test`
(CIFAR-10's test set by default; `--test .../imagenet-sample-500.tar` for the ImageNet models) in onnxruntime,
with `--agreement` also the agreement with the float model; results to bench/results/sensitivity_<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from toolchain import api
from toolchain.core.paths import shared_dir

RESULTS = Path(__file__).resolve().parent / "results"


def _role(node: onnx.NodeProto) -> str:
    if node.op_type != "Conv":
        return node.op_type
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return "DWConv" if group > 1 else "Conv"


def activation_groups(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Activation QuantizeLinear nodes (weights and biases have none) by 'producer→consumers'."""
    init = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers = _readers(model)
    groups = defaultdict(list)
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in init):
        source = producer.get(q.input[0])
        if source is not None and source.op_type == "Clip":
            source = producer.get(source.input[0])
        after = sorted({_role(r) for dq in readers[q.output[0]] for r in readers[dq.output[0]]})
        name = f"{_role(source) if source is not None else 'input'}→{'/'.join(after) or 'output'}"
        groups[name].append(q)
    return dict(groups)


def weight_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Weighted layers' weight names by kind: first conv, depthwise, 1x1, SE (a conv after a global pool), ..."""
    producer = {o: n for n in model.graph.node for o in n.output}
    readers = _readers(model)
    init = {i.name: i for i in model.graph.initializer}
    groups = defaultdict(list)
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm") or n.input[1] not in producer:
            continue
        weight = producer[n.input[1]].input[0].removesuffix("_quantized")
        data = producer.get(n.input[0])
        while data is not None and data.op_type in ("DequantizeLinear", "QuantizeLinear", "Clip"):
            data = producer.get(data.input[0])
        if n.op_type == "Gemm":
            kind = "Gemm (classifier)"
        elif data is None:
            kind = "first conv"
        elif _role(n) == "DWConv":
            kind = "depthwise conv"
        elif data.op_type in ("GlobalAveragePool", "Relu") and _feeds_from_pool(data, producer):
            kind = "SE conv"
        else:
            kind = "conv + activation" if _next_compute(n, readers, init) in ACTIVATIONS else "conv, linear output"
        groups[kind].append(weight)
    return dict(groups)


ACTIVATIONS = ("Relu", "HardSwish", "Clip", "Sigmoid", "HardSigmoid")


def _readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    readers = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            readers[i].append(n)
    return readers


def _is_grid_clip(node: onnx.NodeProto, readers: dict, init: dict) -> bool:
    """A Clip the quantizer wrote to bound a low-bit grid inside a UINT8 QuantizeLinear: its top is that grid's
    top integer (a ReLU6 before a quantizer is an activation: 6 falls between the grid's points)."""
    after = readers.get(node.output[0], [])
    if node.op_type != "Clip" or [r.op_type for r in after] != ["QuantizeLinear"] or len(node.input) < 3:
        return False
    q = after[0]
    if node.input[2] not in init or q.input[1] not in init:
        return False
    hi = float(numpy_helper.to_array(init[node.input[2]]))
    scale = float(numpy_helper.to_array(init[q.input[1]]))
    zero = float(numpy_helper.to_array(init[q.input[2]])) if len(q.input) > 2 and q.input[2] in init else 0.0
    top = hi / scale + zero
    return abs(top - round(top)) < 1e-3 and round(top) < 255


def _next_compute(node: onnx.NodeProto, readers: dict, init: dict) -> str | None:
    """The first op after `node` that is not a Q/DQ/Clip-to-grid (None at a fork or the graph output)."""
    for _ in range(4):
        after = readers.get(node.output[0], [])
        if len(after) != 1:
            return None
        node = after[0]
        grid_clip = _is_grid_clip(node, readers, init)
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and not grid_clip:
            return node.op_type
    return None


def _feeds_from_pool(node: onnx.NodeProto, producer: dict) -> bool:
    """A conv reading a global pool, directly or through the SE's first conv and ReLU."""
    for _ in range(6):
        if node is None:
            return False
        if node.op_type == "GlobalAveragePool":
            return True
        node = producer.get(node.input[0])
    return False


def with_8bit_activations(model: onnx.ModelProto, quants: list[onnx.NodeProto]) -> onnx.ModelProto:
    """A copy where `quants` (and their DQs, which share the parameters) use 255 steps over the same range.

    The int32 biases of the layers reading them are requantized to the new input scale: onnxruntime's
    QLinearConv / QGemm take the integers as if at input scale x weight scale and ignore the bias DQ's scale."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    init = {i.name: i for i in out.graph.initializer}
    producer = {o: n for n in out.graph.node for o in n.output}
    readers = _readers(out)
    names = {q.name for q in quants}
    quants = [n for n in out.graph.node if n.name in names]
    for q in quants:
        scale, zero = numpy_helper.to_array(init[q.input[1]]), numpy_helper.to_array(init[q.input[2]])
        levels = _levels(out, q)
        lo, hi = (0 - float(zero)) * float(scale), (levels - float(zero)) * float(scale)
        new_scale = np.float32((hi - lo) / 255)
        new_zero = np.uint8(np.clip(round(-lo / new_scale), 0, 255))
        init[q.input[1]].CopyFrom(numpy_helper.from_array(np.asarray(new_scale, np.float32), q.input[1]))
        init[q.input[2]].CopyFrom(numpy_helper.from_array(np.asarray(new_zero, np.uint8), q.input[2]))
        for layer in (r for dq in readers[q.output[0]] for r in readers[dq.output[0]]):
            if layer.op_type in ("Conv", "Gemm") and len(layer.input) > 2 and layer.input[2] in producer:
                _requantize_bias(init, producer, layer, float(new_scale))
    return out


def _requantize_bias(init: dict, producer: dict, layer: onnx.NodeProto, input_scale: float) -> None:
    bias_dq, weight_dq = producer[layer.input[2]], producer[layer.input[1]]
    values = numpy_helper.to_array(init[bias_dq.input[0]]).astype(np.float64)
    bias = values * numpy_helper.to_array(init[bias_dq.input[1]]).astype(np.float64)
    scale = (input_scale * numpy_helper.to_array(init[weight_dq.input[1]]).astype(np.float64)).astype(np.float32)
    quantized = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
    init[bias_dq.input[0]].CopyFrom(numpy_helper.from_array(quantized, bias_dq.input[0]))
    init[bias_dq.input[1]].CopyFrom(numpy_helper.from_array(scale, bias_dq.input[1]))


def _levels(model: onnx.ModelProto, q: onnx.NodeProto) -> int:
    """The quantizer's top integer: the Clip before it bounds a low-bit grid inside the UINT8 container."""
    producer = {o: n for n in model.graph.node for o in n.output}
    init = {i.name: i for i in model.graph.initializer}
    clip = producer.get(q.input[0])
    if clip is None or clip.op_type != "Clip":
        return 255
    scale, zero = float(numpy_helper.to_array(init[q.input[1]])), float(numpy_helper.to_array(init[q.input[2]]))
    hi = float(numpy_helper.to_array(init[clip.input[2]]))
    return round(hi / scale + zero)


def with_float_weights(model: onnx.ModelProto, float_model: onnx.ModelProto, weights: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    floats = {i.name: i for i in float_model.graph.initializer}
    for node in out.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].removesuffix("_quantized") in weights:
            name = node.input[0].removesuffix("_quantized")
            out.graph.initializer.append(floats[name])
            node.op_type, node.name = "Identity", f"{node.name}_float"
            del node.input[1:]
            del node.attribute[:]
            node.input[0] = name
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("qdq")
    parser.add_argument("folded")
    parser.add_argument("--name", required=True)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--test", default=None, help="labelled test archive (default: ../shared/datasets' CIFAR-10 "
                        "test set; ImageNet: imagenet-sample-500.tar)")
    parser.add_argument("--agreement", action="store_true",
                        help="also the top-1 agreement with the float model (runs it beside every evaluation)")
    args = parser.parse_args()
    test = Path(args.test) if args.test else shared_dir() / "datasets" / "cifar10-test-jpg.tar.gz"
    model, float_model = onnx.load(args.qdq), onnx.load(args.folded)

    def measure(candidate: onnx.ModelProto, prefix: str = "") -> dict[str, float]:
        """top1 (and agreement with the float model, with --agreement) under keys starting with `prefix`."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(candidate, path)
            result = api.evaluate_model(path, test, limit=args.limit, progress=False,
                                        reference=args.folded if args.agreement else None)
        out = {f"{prefix}top1": result.top1}
        if result.agreement is not None:
            out[f"{prefix}agreement"] = result.agreement
        return out

    rows = [{"group": "none (as quantized)", "kind": "-", "count": 0, **measure(model)},
            {"group": "float model", "kind": "-", "count": 0, **measure(float_model)}]
    acts, weights = activation_groups(model), weight_groups(model)
    low_bit = [q for qs in acts.values() for q in qs if _levels(model, q) < 255]
    if low_bit:
        rows.append({"group": "every activation", "kind": "activations at 8 bits", "count": len(low_bit),
                     **measure(with_8bit_activations(model, low_bit))})
    rows.append({"group": "every weight", "kind": "weights in float", "count": sum(map(len, weights.values())),
                 **measure(with_float_weights(model, float_model, [w for ws in weights.values() for w in ws]))})
    for name, quants in sorted(acts.items()):
        quants = [q for q in quants if _levels(model, q) < 255]
        if quants:
            others = [q for q in low_bit if q not in quants]
            rows.append({"group": name, "kind": "activations at 8 bits", "count": len(quants),
                         **measure(with_8bit_activations(model, quants)),
                         **measure(with_8bit_activations(model, others), "alone_")})
            print(json.dumps(rows[-1]), flush=True)
    every_weight = [w for ws in weights.values() for w in ws]
    for name, names in sorted(weights.items()):
        rows.append({"group": name, "kind": "weights in float", "count": len(names),
                     **measure(with_float_weights(model, float_model, names)),
                     **measure(with_float_weights(model, float_model, [w for w in every_weight if w not in names]),
                               "alone_")})
        print(json.dumps(rows[-1]), flush=True)
    write_results(args.name, args.qdq, args.limit, test.name, rows)


def write_results(name: str, qdq: str, limit: int, test_name: str, rows: list[dict]) -> None:
    base = rows[0]["top1"]
    (RESULTS / f"sensitivity_{name}.json").write_text(json.dumps({"model": qdq, "limit": limit, "test": test_name,
                                                                   "rows": rows}, indent=1) + "\n")

    def cell(row: dict, key: str) -> str:
        if key not in row:
            return "–"
        agreement = row.get(key.replace("top1", "agreement"))
        return f"{100 * row[key]:.2f}" + (f" ({100 * agreement:.1f})" if agreement is not None else "")

    lines = [f"# Sensitivity of {name} (top-1 on the first {limit} images of {test_name})", "",
             "Restored: one group at a time, activations to 8 bits over the same learned range, weights to float. "
             "Alone: that group is the only one left low-bit (every other activation at 8 bits, or every other "
             "weight in float). In brackets, where measured: the top-1 agreement with the float model. "
             "Source: `bench/sensitivity.py`.", "",
             "| group | restored | tensors | top-1 % restored | gain | top-1 % alone |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['group']} | {r['kind']} | {r['count']} | {cell(r, 'top1')} | {100 * (r['top1'] - base):+.2f} | "
              f"{cell(r, 'alone_top1')} |" for r in rows]
    (RESULTS / f"sensitivity_{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
