"""The QDQ quantizer: placement rules, stored types, parameters, fusion in onnxruntime, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from toolchain.onnxio import qdq_names
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.driver import quantize

F = onnx.TensorProto.FLOAT


@pytest.fixture(scope="module")
def w8a8(resnet20_random, calib32):
    return quantize(resnet20_random, calib32, QuantConfig(), progress=False)


def _initializers(model):
    return {init.name: init for init in model.graph.initializer}


def _ops(model):
    return [node.op_type for node in model.graph.node]


def test_every_layer_is_quantized_first_and_last_included(w8a8):
    """Every Conv and the Gemm read a DequantizeLinear of an INT8 weight and an INT32 bias; the input is quantized."""
    model = w8a8.model
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = _initializers(model)
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(layers) == 20 and "BatchNormalization" not in _ops(model)
    for layer in layers:
        data, weight, bias = (producers[name] for name in layer.input[:3])
        assert {data.op_type, weight.op_type, bias.op_type} == {"DequantizeLinear"}, layer.name
        assert inits[weight.input[0]].data_type == onnx.TensorProto.INT8
        assert inits[bias.input[0]].data_type == onnx.TensorProto.INT32
    first_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    assert first_q.input[0] == "input"


def test_network_output_ends_in_q_dq_with_its_own_name(w8a8):
    """The graph output is produced by a DequantizeLinear fed by a QuantizeLinear (so the last layer fuses)."""
    model = w8a8.model
    producers = {out: node for node in model.graph.node for out in node.output}
    dq = producers["logits"]
    assert dq.op_type == "DequantizeLinear" and producers[dq.input[0]].op_type == "QuantizeLinear"
    assert producers[producers[dq.input[0]].input[0]].op_type == "Gemm"


def test_w8a8_fuses_every_conv_gemm_and_add(w8a8):
    """onnxruntime's optimised graph: coverage 1.0, no float Conv/Gemm/Add, one Q (input) and one DQ (output)."""
    fusion = w8a8.report["fusion"]
    assert fusion["coverage"] == 1.0 and fusion["float_ops_left"] == {}
    assert fusion["optimized_ops"]["QLinearAdd"] == 9 and fusion["optimized_ops"]["QLinearConv"] == 19


def test_relu_outputs_have_zero_point_zero_and_pass_through_ops_share_parameters(w8a8):
    """ReLU outputs: zero point 0. Flatten/Slice outputs reuse their input's scale initializer (shared spec)."""
    model = w8a8.model
    inits = _initializers(model)
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and "Relu" in node.input[0]:
            assert int(numpy_helper.to_array(inits[node.input[2]])) == 0, node.name
    activations = w8a8.report["activations"]
    flatten = next(t for t, spec in activations.items() if "Flatten" in t)
    assert activations[flatten]["shared_with"] is not None
    assert activations[flatten]["scale"] == activations[activations[flatten]["shared_with"]]["scale"]


def test_bias_scale_is_input_scale_times_weight_scale(w8a8):
    """Derived spec: bias scale = input scale x weight scale per channel (relative tolerance 1e-6), zero point 0."""
    model = w8a8.model
    inits = _initializers(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    data, weight, bias = (producers[name] for name in conv.input[:3])
    s_x = numpy_helper.to_array(inits[data.input[1]])
    s_w = numpy_helper.to_array(inits[weight.input[1]])
    s_b = numpy_helper.to_array(inits[bias.input[1]])
    np.testing.assert_allclose(s_b, s_x * s_w, rtol=1e-6)
    assert s_w.shape == (16,) and not numpy_helper.to_array(inits[bias.input[2]]).any()


def test_report_keys_are_stable_and_the_typed_report_is_what_is_written(w8a8):
    """Rule: NAME.report.json keeps its keys and their order (users' scripts read them; schema_version first), and the
    JSON form is the typed report's to_dict(), so the two cannot drift apart."""
    assert list(w8a8.report) == ["schema_version", "toolchain_version", "source", "config", "calibration", "opset",
                                 "batchnorm_folded", "layers", "activations", "unquantized", "integer_nodes", "fusion",
                                 "summary", "target", "warnings", "reconstruction", "seconds"]
    assert list(w8a8.report["layers"][0]) == ["node", "op_type", "output", "fused_activation", "weight_bits", "weight",
                                              "output_bits", "output_qparams", "sqnr_db"]
    assert w8a8.typed.to_dict() == w8a8.report
    assert w8a8.typed.summary.quantized_layers == 20  # ResNet-20: 19 convolutions and the classifier


def test_report_has_per_layer_bits_scales_and_sqnr(w8a8):
    """The report lists every layer with bits, scales, zero points and a finite SQNR (> 15 dB at W8A8: end-to-end error
    accumulated up to that layer)."""
    layers = [layer for layer in w8a8.report["layers"] if layer["op_type"] in ("Conv", "Gemm")]
    assert len(layers) == 20
    for layer in layers:
        assert layer["weight_bits"] == 8 and layer["output_bits"] == 8
        assert len(layer["weight"]["scale"]) == len(layer["weight"]["zero_point"]) > 1
        assert 15.0 < layer["sqnr_db"] < 200.0, layer


@pytest.mark.parametrize("storage, weight_type, opset", [("native", onnx.TensorProto.INT4, 21), ("ort", onnx.TensorProto.INT4, 21)])
def test_four_bit_weights_are_int4_at_opset_21(resnet20_random, calib32, storage, weight_type, opset):
    """W4A4: weights stored as INT4 at opset 21; the model loads in onnxruntime with default optimisations."""
    result = quantize(resnet20_random, calib32[:16], QuantConfig(w_bits=4, a_bits=4, low_bit_storage=storage), progress=False)
    inits = _initializers(result.model)
    weights = [inits[n.input[0]] for n in result.model.graph.node if n.op_type == "DequantizeLinear" and qdq_names.is_weight_integers(n.input[0])]
    assert weights and all(w.data_type == weight_type for w in weights)
    assert result.report["opset"] == opset
    ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_two_bit_native_types_are_int2_at_opset_25(resnet20_random, calib32, monkeypatch):
    """W2A2 native: INT2 weights, UINT2 activations, opset 25; the file passes onnx.checker and runs unoptimised in onnxruntime."""
    import toolchain.quantize.report as report_module
    from toolchain.runtimes.coverage import FusionReport

    # onnxruntime 1.32's QDQ fusion mis-handles 2-bit types, so the fusion probe cannot load this file.
    unknown = FusionReport(coverage=0.0, mac_coverage=None, integer_ops=0, float_ops=[], shape_ops=0, integer_layers=0,
                           float_layers=0, macs=0, float_macs=0, stray_q=0, stray_dq=0, float_ops_left={},
                           fully_integer=False, optimized_ops={})
    monkeypatch.setattr(report_module, "fusion_coverage", lambda model: unknown)
    result = quantize(resnet20_random, calib32[:16], QuantConfig(w_bits=2, a_bits=2, low_bit_storage="native"), progress=False)
    inits = _initializers(result.model)
    types = {inits[n.input[0]].data_type for n in result.model.graph.node
             if n.op_type == "DequantizeLinear" and n.input[0] in inits and qdq_names.is_weight_integers(n.input[0])}
    assert types == {onnx.TensorProto.INT2} and result.report["opset"] == 25
    zero_points = {inits[n.input[2]].data_type for n in result.model.graph.node if n.op_type == "QuantizeLinear"}
    assert onnx.TensorProto.UINT2 in zero_points and onnx.TensorProto.UINT8 in zero_points  # the input stays 8-bit
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(result.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": calib32[:2]})[0].shape == (2, 10)


def test_two_bit_ort_storage_holds_two_bit_values_and_loads_in_onnxruntime(resnet20_random, calib32):
    """W2A2 ort storage: weights in INT4 with values in [-2, 1], activations clipped to 4 levels; default session loads it."""
    result = quantize(resnet20_random, calib32[:16], QuantConfig(w_bits=2, a_bits=2), progress=False)
    inits = _initializers(result.model)
    weights = [numpy_helper.to_array(inits[node.input[0]]).astype(np.int64) for node in result.model.graph.node
               if node.op_type == "DequantizeLinear" and qdq_names.is_weight_integers(node.input[0])]
    weighted_layers = [layer for layer in result.report["layers"] if layer.get("weight_bits")]
    assert weighted_layers and len(weights) == len(weighted_layers)  # every layer's weights were looked at
    assert all(values.min() >= -2 and values.max() <= 1 for values in weights)
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": calib32[:4]})[0]
    scale = numpy_helper.to_array(inits[qdq_names.scale("logits")])
    zero = numpy_helper.to_array(inits[qdq_names.zero_point("logits")]).astype(np.int64)
    levels = np.unique(np.rint(logits / scale).astype(np.int64) + zero)
    assert levels.min() >= 0 and levels.max() <= 3  # 2-bit output: at most 4 distinct levels


def test_first_last_8bit_keeps_first_and_last_weights_at_8_bits_and_output_float(resnet20_random, calib32):
    """--first-last-8bit (academic): first conv and last Gemm weights INT8, inner weights INT4, the graph output is float."""
    result = quantize(resnet20_random, calib32[:16], QuantConfig(w_bits=4, a_bits=4, first_last_8bit=True), progress=False)
    layers = [layer for layer in result.report["layers"] if layer.get("weight_bits")]
    assert layers[0]["weight_bits"] == 8 and layers[-1]["weight_bits"] == 8
    assert {layer["weight_bits"] for layer in layers[1:-1]} == {4}
    producers = {out: node for node in result.model.graph.node for out in node.output}
    assert producers["logits"].op_type == "Gemm" and layers[-1]["output_bits"] is None


def test_bias_that_would_overflow_int32_raises_the_weight_scale():
    """A bias too large for int32 at scale s_x * s_w: the weight scale of that channel is raised so it fits (as onnxruntime does)."""
    from toolchain.quantize.materialize.qdq import INT32_MAX, guard_bias_overflow
    from toolchain.quantize.qparams import QParams, activation_type, symmetric_params, weight_type

    activation = QParams(np.asarray(np.float32(1e-4)), np.asarray(0), activation_type(8))
    weight = symmetric_params(np.array([1e-3, 1e-3], np.float32), weight_type(8), axis=0)
    bias = np.array([1.0, 1e6], np.float32)  # channel 1: 1e6 / (1e-4 * 1e-3 / 127) is far beyond int32
    guarded = guard_bias_overflow(activation, weight, bias)
    assert guarded.scale[0] == weight.scale[0] and guarded.scale[1] > weight.scale[1]
    assert np.all(np.abs(bias / (float(activation.scale) * guarded.scale)) <= INT32_MAX)


def test_reduce_range_stores_8_bit_weights_in_7_bits_and_the_integer_kernels_match_the_qdq_semantics(resnet20_random, calib32):
    """--reduce-range: every 8-bit weight integer in [-64, 63] (INT8 type kept); onnxruntime's integer kernels then agree
    with the unoptimised (float) QDQ evaluation to one output step on 99 % of logits, whatever the CPU."""
    result = quantize(resnet20_random, calib32, QuantConfig(reduce_range=True), progress=False)
    inits = _initializers(result.model)
    weights = [inits[n.input[0]] for n in result.model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert len(weights) == 20
    for weight in weights:
        values = numpy_helper.to_array(weight).astype(np.int64)
        assert values.min() >= -64 and values.max() <= 63, weight.name
        assert values.max() == 63 or values.min() == -64, "the 7-bit range is used in full"
    outputs = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(result.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"input": calib32})[0])
    step = float(numpy_helper.to_array(inits[qdq_names.scale("logits")]))
    assert np.mean(np.abs(outputs[0] - outputs[1]) <= step * (1 + 1e-5)) >= 0.99


def test_a_cpu_without_vnni_warns_about_saturation_unless_reduce_range(resnet20_random, calib32, monkeypatch):
    """On a CPU without VNNI an 8-bit-weight quantization says that the integer kernels saturate and names --reduce-range;
    with --reduce-range, or with VNNI, it says nothing of it."""
    import toolchain.quantize.driver as quantize_module

    monkeypatch.setattr(quantize_module, "has_vnni", lambda: False)
    warned = quantize(resnet20_random, calib32[:8], QuantConfig(), progress=False).warnings
    assert any("--reduce-range" in w for w in warned)
    assert not any("VNNI" in w for w in quantize(resnet20_random, calib32[:8], QuantConfig(reduce_range=True), progress=False).warnings)
    monkeypatch.setattr(quantize_module, "has_vnni", lambda: True)
    assert not any("VNNI" in w for w in quantize(resnet20_random, calib32[:8], QuantConfig(), progress=False).warnings)


def test_network_input_spans_the_preprocessing_range(resnet20_random, calib32):
    """Rule: the network input is quantized over the range its stored preprocessing gives any image
    ([-mean/std, (1-mean)/std] over the channels), even when the calibration inputs cover less of it; within one
    step (the range's end points may round to the grid)."""
    from toolchain.onnxio.preprocessing import read_preprocessing

    narrow = np.clip(calib32, -0.5, 0.5)
    result = quantize(resnet20_random, narrow, QuantConfig(), progress=False)
    lo, hi = read_preprocessing(resnet20_random).input_range()
    init = _initializers(result.model)
    name = result.model.graph.input[0].name
    scale = float(numpy_helper.to_array(init[qdq_names.scale(name)]))
    zero = int(numpy_helper.to_array(init[qdq_names.zero_point(name)]))
    assert abs((0 - zero) * scale - lo) <= scale and abs((255 - zero) * scale - hi) <= scale


def test_network_output_on_synthetic_data_gets_headroom_on_its_top(resnet20_random, calib32):
    """Rule: with synthetic calibration data (the manifest's method) and minmax ranges (8 bits), the network
    output's top end is SYNTHETIC_OUTPUT_HEADROOM times the observed maximum, its bottom unchanged (within one
    step: the zero point rounds); with real data, or a searched range (mse), the observed range stands."""
    from toolchain.quantize.driver import SYNTHETIC_OUTPUT_HEADROOM

    output = resnet20_random.graph.output[0].name

    def ends(calib_info, **config):
        result = quantize(resnet20_random, calib32, QuantConfig(**config), calib_info=calib_info, progress=False)
        p = result.report["activations"][output]
        return -p["zero_point"] * p["scale"], (255 - p["zero_point"]) * p["scale"], p["scale"], result.report

    real_lo, real_hi, _, real_report = ends(None, calibrator="minmax")  # the observed range
    lo, hi, step, report = ends({"method": "dgh"})
    assert real_hi > 0 and abs(hi - SYNTHETIC_OUTPUT_HEADROOM * real_hi) <= step and abs(lo - real_lo) <= step
    assert report["calibration"]["output_headroom"] == {"tensors": [output], "factor": SYNTHETIC_OUTPUT_HEADROOM}
    assert "output_headroom" not in real_report["calibration"]
    assert ends({"method": "dgh"}, calibrator="mse")[3]["calibration"]["output_headroom"]["tensors"] == []


def test_zero_pads_fold_into_the_convs_that_read_them():
    """Rule: a constant-mode zero Pad on the spatial axes read only by Convs becomes those Convs' pads (same
    outputs within 1e-5 relative; no Pad left, so onnxruntime runs no float op there); a channel Pad or a
    non-zero value stays."""
    from onnx import helper

    from toolchain.quantize.fold.pad import FoldZeroPadIntoConvPass

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    def model(pads, value):
        nodes = [helper.make_node("Pad", ["x", "pads", "v"], ["p"]),
                 helper.make_node("Conv", ["p", "w"], ["y"], strides=[2, 2], pads=[1, 0, 0, 1])]
        inits = [w, numpy_helper.from_array(np.array(pads, np.int64), "pads"),
                 numpy_helper.from_array(np.array(value, np.float32), "v")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 3, 9, 9])],
                                  [helper.make_tensor_value_info("y", F, None)], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 3, 9, 9)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    spatial = model([0, 0, 0, 1, 0, 0, 1, 1], 0.0)
    before = run(spatial)
    assert FoldZeroPadIntoConvPass()(spatial).modified
    assert "Pad" not in _ops(spatial)
    assert np.abs(run(spatial) - before).max() <= 1e-5 * np.abs(before).max()
    for pads, value in (([0, 1, 0, 0, 0, 1, 0, 0], 0.0), ([0, 0, 1, 1, 0, 0, 1, 1], 0.5)):
        kept = model(pads, value)
        assert not FoldZeroPadIntoConvPass()(kept).modified and "Pad" in _ops(kept)
