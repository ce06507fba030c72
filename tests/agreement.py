"""Layer-by-layer agreement of the torch executor with onnxruntime on a QDQ model (shared by the agreement tests).

Usage:
    from agreement import layerwise_agreement
    assert layerwise_agreement(qdq_model, inputs) >= 0.999
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from toolchain.executor import OnnxModule


def layerwise_agreement(model: onnx.ModelProto, x: np.ndarray, executor_class=OnnxModule) -> float:
    """Fraction of QuantizeLinear outputs (all of them, every element) where the executor and onnxruntime
    (unoptimised) agree exactly when each layer is fed onnxruntime's own quantized inputs; also asserts
    that no element differs by more than one step.

    Every Q output is cut: its readers take it as a graph input holding onnxruntime's value, so errors
    cannot travel from layer to layer. This is the check that means something on random-weight BN
    networks, where perturbations at float-rounding level grow exponentially with depth.
    """
    q_outputs = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    zero_point_types = {i.name: i.data_type for i in model.graph.initializer}
    q_types = {n.output[0]: zero_point_types[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(q, q_types[q], None) for q in q_outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    reference = dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: x})))
    cut = onnx.ModelProto()
    cut.CopyFrom(probe)
    for node in cut.graph.node:
        if node.op_type != "QuantizeLinear":
            for i, name in enumerate(node.input):
                if name in reference and name in q_outputs:
                    node.input[i] = f"{name}__reference"
    for q in q_outputs:
        cut.graph.input.append(onnx.helper.make_tensor_value_info(f"{q}__reference", onnx.TensorProto.FLOAT, None))
    module = executor_class(cut)
    feeds = [torch.from_numpy(x)] + [torch.from_numpy(reference[q].astype(np.float32)) for q in q_outputs]
    ordered = dict(zip([i.name for i in cut.graph.input], feeds))
    with torch.no_grad():
        outputs = module(*[ordered[name] for name in module.input_names])
    got = dict(zip(module.output_names, outputs))
    equal = total = 0
    for q in q_outputs:
        diff = np.abs(got[q].numpy().astype(np.int64) - reference[q].astype(np.int64))
        assert diff.max() <= 1, f"{q}: {diff.max()} steps apart with identical inputs"
        equal += int((diff == 0).sum())
        total += diff.size
    return equal / total
