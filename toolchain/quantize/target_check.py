"""Check an emitted QDQ model against its target profile: the layout rules, then the runtime itself.

Usage:
    problems = layout_problems(qdq_model, target_profile("tensorrt"), batch=None)   # [] when it conforms
    verdict = verify_on_runtime(qdq_model, target_profile("qnn"), threads=2)
    verdict.verified, verdict.coverage, verdict.why        # a RuntimeVerdict (quantize.report_sections)

The layout rules are the profile's fields read back from the graph (types of every activation Q/DQ,
zero points, bias storage, Q/DQ placement, the network output, the batch), so the structural tests of
each target and the report say the same thing. `verify_on_runtime` opens the model in the target's
runtime when that package is installed (OpenVINO, QNN) and reports what it runs on integers; TensorRT
needs a GPU (bench/tensorrt_check.py), ort-arm an ARM build of onnxruntime: their verdict says so.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import onnx
from onnx import numpy_helper

from toolchain.onnxio.files import written_to_temporary_folder
from toolchain.quantize.annotate.rules import WEIGHTED_OPS
from toolchain.quantize.report_sections import RuntimeVerdict
from toolchain.quantize.targets import TargetProfile
from toolchain.runtimes import runtime_agreement_db, runtime_coverage

_T = onnx.TensorProto
_SIGNED = {_T.INT8, _T.INT16, _T.INT4, _T.INT2}
_PACKAGES = {"openvino": "openvino", "qnn": "onnxruntime_qnn"}
# Below this SQNR against the reference the runtime computes something else. Measured on ResNet-20 (8 DGH inputs):
# QNN HTP W8A8 28.7, W4A8 27.7, W4A16 44.6, W8A16 47.8 dB; OpenVINO W8A8 with --reduce-range 29.3 dB. Wrong runs:
# QNN W8A16 before the weight-scale floor -7.1 dB, OpenVINO with full-range weights on a CPU without VNNI 12.7 dB.
AGREEMENT_DB = 15.0


def layout_problems(model: onnx.ModelProto, profile: TargetProfile, batch: int | None) -> list[str]:
    """Where `model` breaks the rules of `profile` (one line each; empty when it conforms)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {name: node for node in graph.node for name in node.output}
    outputs = {o.name for o in graph.output}
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            by_input.setdefault(name, []).append(node)

    def readers(tensor: str) -> list[onnx.NodeProto]:
        return by_input.get(tensor, [])
    problems = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        zero = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zero is None:
            problems.append(f"QuantizeLinear {node.name!r} has no zero-point initializer")
            continue
        if (zero.data_type in _SIGNED) != profile.signed_activations:
            want = "signed" if profile.signed_activations else "unsigned"
            problems.append(f"activation {node.input[0]!r} is {_T.DataType.Name(zero.data_type)}, {profile.name} wants {want}")
        if profile.symmetric_activations and np.any(numpy_helper.to_array(zero) != 0):
            problems.append(f"activation {node.input[0]!r} has a non-zero zero point ({profile.name} is symmetric)")
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        for position, name in enumerate(node.input[:3]):
            source = producer.get(name)
            from_dq = source is not None and source.op_type == "DequantizeLinear"
            if position < 2 and name and not from_dq:
                problems.append(f"{node.op_type} {node.name!r} input {position} ({name!r}) does not come from a DequantizeLinear")
            if position == 2 and name:
                if profile.float_bias and from_dq:
                    problems.append(f"{node.op_type} {node.name!r} has a quantized bias ({profile.name} wants it float)")
                if not profile.float_bias and not from_dq:
                    problems.append(f"{node.op_type} {node.name!r} has a float bias ({profile.name} wants int32)")
        if profile.inputs_only:
            # a layer output is quantized only as the skip input of a residual Add (the other input is fused)
            quantized = [n for n in readers(node.output[0]) if n.op_type == "QuantizeLinear"]
            dequantized = [d for q in quantized for d in readers(q.output[0]) if d.op_type == "DequantizeLinear"]
            if quantized and not all(r.op_type == "Add" for d in dequantized for r in readers(d.output[0])):
                problems.append(f"{node.op_type} {node.name!r} output is quantized ({profile.name}: Q/DQ on layer inputs only)")
    for name in outputs:
        source = producer.get(name)
        output_quantized = source is not None and source.op_type == "DequantizeLinear"
        if output_quantized != profile.quantize_output:
            problems.append(f"network output {name!r} {'ends in' if output_quantized else 'lacks'} a DequantizeLinear "
                            f"({profile.name} {'quantizes' if profile.quantize_output else 'leaves float'} the output)")
    if batch is not None:
        for value in graph.input:
            dims = value.type.tensor_type.shape.dim
            if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value != batch:
                problems.append(f"input {value.name!r} does not have the fixed batch {batch}")
    return problems


def verify_on_runtime(model: onnx.ModelProto, profile: TargetProfile, threads: int,
                      inputs: np.ndarray | None = None) -> RuntimeVerdict:
    """The model opened in the target's runtime and, with `inputs` (a few calibration inputs), its outputs
    compared with the file's exact semantics: verified needs every layer on the runtime's integer path and at
    least AGREEMENT_DB."""
    if profile.runtime not in _PACKAGES:
        why = {"tensorrt": "needs a GPU and the tensorrt package (bench/tensorrt_check.py)",
               "ort": "onnxruntime x86 is the fusion report above" if profile.name == "ort-x86"
               else "its integer kernels need an ARM build of onnxruntime; checked for layout and run in onnxruntime x86"}
        return RuntimeVerdict(profile.runtime, profile.name == "ort-x86", why=why[profile.runtime])
    if importlib.util.find_spec(_PACKAGES[profile.runtime]) is None:
        return RuntimeVerdict(profile.runtime, False,
                              why=f"{_PACKAGES[profile.runtime]} is not installed (pip install -e \".[{profile.runtime}]\")")

    with written_to_temporary_folder(model) as path:
        details = runtime_coverage(profile.runtime, path, threads)
        runs = details.get("on_htp", True) if profile.runtime == "qnn" else True
        agreement = runtime_agreement_db(profile.runtime, path, inputs, threads) if runs and inputs is not None else None
    verdict = RuntimeVerdict(profile.runtime, bool(runs), details["coverage"], details)
    if agreement is None or inputs is None:  # compared only on inputs
        return verdict
    verdict = replace(verdict, agreement_db=round(agreement, 2) if np.isfinite(agreement) else "inf")
    if agreement < AGREEMENT_DB:
        verdict = replace(verdict, verified=False, why=(
            f"{profile.runtime}'s outputs disagree with the file's Q/DQ semantics: {agreement:.1f} dB SQNR on "
            f"{len(inputs)} calibration inputs (a correct run gives over {AGREEMENT_DB:.0f} dB): the runtime computes "
            "some layer differently from the file"))
    return verdict
