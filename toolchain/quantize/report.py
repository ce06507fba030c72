"""The quantizer's report: per-layer bits, parameters and SQNR against FP32, and onnxruntime's fusion coverage.

Usage:
    report = build_report(float_model, qdq, plan, act, weights, calib, config, source, calib_info, folded)
    sqnr = streamed_sqnr(float_model, ["logits"], qdq, ["logits"], calib, Execution())   # dB, batch by batch
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

import toolchain
from toolchain.core.execution import Execution
from toolchain.onnxio import qdq_names
from toolchain.onnxio.sessions import exposing, inference_session
from toolchain.quantize.annotate.placement import QuantPlan
from toolchain.quantize.calibrate.ranges import batch_rows
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.report_types import ActivationReport, CalibrationReport, LayerReport, QuantReport, ReportSummary
from toolchain.runtimes.coverage import fusion_coverage

SQNR_SAMPLES = 256
SQNR_BATCH = 64  # samples per onnxruntime run of the report's SQNR pass (fewer for large tensors: batch_rows)


def _session(model: onnx.ModelProto, names: list[str], optimize: bool, execution: Execution) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = execution.thread_count
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with exposing(model, names) as probe:
        return inference_session(probe, options, execution.providers)


def streamed_sqnr(float_model: onnx.ModelProto, reference_names: list[str], qdq: onnx.ModelProto,
                  quantized_names: list[str], sample: np.ndarray, execution: Execution, progress: bool = False,
                  what: str = "SQNR") -> list[float]:
    """SQNR (dB) of each quantized tensor against its FP reference over `sample`, batch by batch.

    The float model runs optimised, the QDQ model as written (its Q/DQ semantics). Only the running sums
    of signal and noise power are kept, so memory is one batch of the exposed tensors, whatever the
    sample size (all layer outputs of 256 images at 224x224 once took 14 GB)."""
    reference = _session(float_model, reference_names, True, execution)
    quantized = _session(qdq, quantized_names, False, execution)
    ref_input, q_input = reference.get_inputs()[0].name, quantized.get_inputs()[0].name
    rows = batch_rows(reference, ref_input, reference_names, sample, SQNR_BATCH)
    signal = np.zeros(len(reference_names))
    noise = np.zeros(len(reference_names))
    for start in tqdm(range(0, len(sample), rows), desc=what, unit="batch", file=sys.stderr, disable=not progress,
                      leave=False):
        batch = sample[start:start + rows]
        ref = reference.run(reference_names, {ref_input: batch})
        got = quantized.run(quantized_names, {q_input: batch})
        for i, (r, q) in enumerate(zip(ref, got)):
            r64 = np.asarray(r, np.float64)
            signal[i] += float(np.sum(r64 ** 2))
            noise[i] += float(np.sum((r64 - np.asarray(q, np.float64)) ** 2))
    return [float("inf") if n == 0.0 else 10.0 * float(np.log10(max(sig, 1e-30) / n)) for sig, n in zip(signal, noise)]


def build_report(float_model, qdq, plan: QuantPlan, act, weights, calib, config: QuantConfig, source: str,
                 calib_info: dict, folded: int, execution: Execution | None = None, progress: bool = False) -> QuantReport:
    """Per-layer bits, parameters and SQNR against FP32 on (up to 256) calibration inputs; fusion coverage. The
    driver completes it (calibrator, target verdict, warnings, reconstruction) once the graph is final."""
    execution = execution or Execution()
    sample = calib[:SQNR_SAMPLES]
    graph_outputs = {o.name for o in qdq.graph.output}
    layer_outputs = [layer.output for layer in plan.layers if layer.output in plan.activations]
    dq_name = {t: qdq_names.value_in_qdq(t, graph_outputs) for t in layer_outputs}
    layer_sqnr = dict(zip(layer_outputs, streamed_sqnr(float_model, layer_outputs, qdq, [dq_name[t] for t in layer_outputs],
                                                       sample, execution, progress, "layer SQNR")))
    layers = [_layer_report(layer, plan, act, weights, layer_sqnr) for layer in plan.layers]
    activations = {
        t: ActivationReport(plan.activations[plan.root(t)].bits, spec.one_sided, spec.shared_with, spec.constant,
                            spec.floor, act[plan.root(t)].to_dict())
        for t, spec in plan.activations.items()
    }
    fusion = fusion_coverage(qdq)
    # On the graph outputs themselves, whatever produces them (a layer, a Flatten after a pool, a float output).
    output_names = [o.name for o in qdq.graph.output]
    output_sqnr = [round(v, 3) for v in streamed_sqnr(float_model, output_names, qdq, output_names, sample, execution)]
    summary = ReportSummary(sum(1 for layer in layers if layer.weight_bits), output_sqnr[0] if output_sqnr else None,
                            fusion.coverage, fusion.mac_coverage, fusion.fully_integer, len(fusion.float_ops))
    return QuantReport(
        toolchain.__version__, source, config.to_dict(), CalibrationReport(len(calib), len(sample), dict(calib_info)),
        next(o.version for o in qdq.opset_import if o.domain in ("", "ai.onnx")), folded, layers, activations,
        [{"node": name, "op_type": op} for name, op in plan.float_nodes],
        [{"node": name, "op_type": op} for name, op in plan.integer_nodes],  # shape arithmetic
        fusion, summary)


def _layer_report(layer, plan: QuantPlan, act, weights, layer_sqnr: dict[str, float]) -> LayerReport:
    weight_bits = plan.weights[layer.weight].bits if layer.weight is not None else None
    weight = weights[layer.weight].to_dict() if layer.weight is not None else None
    if layer.output not in plan.activations:  # academic setting: the network output stays float
        return LayerReport(layer.node, layer.op_type, layer.output, layer.activation_node, weight_bits, weight)
    root = plan.root(layer.output)
    return LayerReport(layer.node, layer.op_type, layer.output, layer.activation_node, weight_bits, weight,
                       plan.activations[root].bits, act[root].to_dict(), round(layer_sqnr[layer.output], 3))
