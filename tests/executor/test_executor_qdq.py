"""Torch executor on QDQ graphs: fake quantization against onnxruntime, integer types, straight-through gradients.

onnxruntime runs with graph optimisations disabled, so Q/DQ stay separate float-semantics ops (no fused
integer kernels). Tolerances:
  - QuantizeLinear outputs (the integers), integer-domain ops on them and DequantizeLinear of them: exact.
  - A float op (Conv, Gemm, MatMul) between DQ and Q: its float32 sum may differ from onnxruntime's by
    rounding, which can move a value across a rounding boundary: >= 99.9 % of the outputs must be exactly
    equal and all must be within one quantization step.
  - Gradients: the straight-through input gradient is g * s / s (1 ulp from g), checked to rtol 1e-6 with
    exact zeros outside the range; the scale gradient against the LSQ formula to rtol 1e-4.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from toolchain.errors import GraphError
from toolchain.executor import OnnxModule

INT64_MAX = np.iinfo(np.int64).max
EXACT_FRACTION = 0.999  # of output elements equal to onnxruntime's after a float Conv/Gemm/MatMul

# name -> (ONNX type, qmin, qmax, opset that introduced it)
QTYPES = {
    "uint8": (TensorProto.UINT8, 0, 255, 17),
    "int8": (TensorProto.INT8, -128, 127, 17),
    "uint4": (TensorProto.UINT4, 0, 15, 21),
    "int4": (TensorProto.INT4, -8, 7, 21),
    "uint2": (TensorProto.UINT2, 0, 3, 25),
    "int2": (TensorProto.INT2, -2, 1, 25),
    "uint16": (TensorProto.UINT16, 0, 65535, 21),
    "int16": (TensorProto.INT16, -32768, 32767, 21),
}
# (weight type, activation type, opset): what the quantizer emits at 8, 4 and 2 bits, with the int8 activations
# of --target ort-arm / tensorrt and the uint16 ones of --target qnn --a-bits 16
BIT_WIDTHS = [("int8", "uint8", 17), ("int4", "uint4", 21), ("int2", "uint2", 25), ("int8", "int8", 17),
              ("int8", "uint16", 21), ("int4", "uint16", 21)]


# ----------------------------------------------------------------------------------------------- helpers


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: list[onnx.TensorProto], opset: int) -> onnx.ModelProto:
    """A checked model; output shapes (left out by _output) are filled in by strict shape inference."""
    graph = helper.make_graph(nodes, "qdq", inputs, [], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset < 25 else 11  # what onnxruntime 1.20+ accepts for these opsets
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.value_info}
    for output in outputs:
        value = inferred[output.name]
        assert value.type.tensor_type.elem_type == output.type.tensor_type.elem_type, output.name
        model.graph.output.append(value)
    onnx.checker.check_model(model, full_check=True)
    return model


def _float_input(name: str, shape: tuple[int, ...]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _output(name: str, elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, None)


def _scale(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _integers(name: str, values: np.ndarray | int, qtype: str | int) -> onnx.TensorProto:
    """An integer initializer (onnx.helper packs INT4/INT2)."""
    elem = QTYPES[qtype][0] if isinstance(qtype, str) else qtype
    values = np.asarray(values, np.int64)
    return helper.make_tensor(name, elem, list(values.shape), values.reshape(-1).tolist())


def _run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _run_executor(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    module = OnnxModule(model)
    with torch.no_grad():
        out = module(*[torch.from_numpy(feeds[name]) for name in module.input_names])
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _quantize(x: np.ndarray, scale: np.ndarray | float, zero: np.ndarray | int, qtype: str, axis: int | None = None) -> np.ndarray:
    """numpy reference: clamp(round_half_even(x / scale) + zero), in float32 as ONNX computes it."""
    _, qmin, qmax, _ = QTYPES[qtype]
    scale, zero = np.asarray(scale, np.float32), np.asarray(zero, np.int64)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return np.clip(np.rint(x.astype(np.float32) / scale) + zero, qmin, qmax).astype(np.int64)


def _symmetric_weights(w: np.ndarray, qtype: str, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric quantization of a float weight: (integers, scales)."""
    _, _, qmax, _ = QTYPES[qtype]
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = (np.abs(w).max(axis=reduce) / qmax).astype(np.float32)
    return _quantize(w, scale, 0, qtype, axis), scale


def _activation_params(lo: float, hi: float, qtype: str) -> tuple[np.float32, int]:
    _, qmin, qmax, _ = QTYPES[qtype]
    scale = np.float32((hi - lo) / (qmax - qmin))
    return scale, int(np.clip(round(qmin - lo / float(scale)), qmin, qmax))


def _assert_within_one_step(got: np.ndarray, want: np.ndarray, step: float, fine_grid: bool = False) -> None:
    """`fine_grid` (16-bit outputs): a step is 1/65535 of the range, so the float32 summation-order differences of
    torch's and onnxruntime's Conv/Gemm (~1e-7 of the magnitude) land on more rounding ties (measured: 99.69 % equal).
    The difference of two dequantized values (q - zp) * s is exact only up to the float32 spacing of the largest
    output, which at 16 bits is ~1e-3 of a step: the bound is one step plus two such spacings."""
    assert got.shape == want.shape
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    exact = float(np.mean(diff == 0))
    assert exact >= (0.995 if fine_grid else EXACT_FRACTION), f"only {exact:.4%} of outputs equal onnxruntime's"
    bound = step * (1 + 1e-5) + 2 * float(np.spacing(np.float32(np.abs(want).max())))
    assert diff.max() <= bound, f"max diff {diff.max()} exceeds one step {step}"


# ------------------------------------------------------------------------------------- forward parity


def _round_trip_data(scale: float, zero: int, qmin: int, qmax: int, rng: np.random.Generator) -> np.ndarray:
    """Exact half steps over and beyond the range, random values, and far out-of-range values."""
    halves = (np.arange(qmin - zero - 4, qmax - zero + 4) + 0.5) * scale
    whole = np.arange(qmin - zero - 4, qmax - zero + 4) * scale
    spread = (qmax - qmin) * scale
    random = rng.uniform(-1.5 * spread, 1.5 * spread, 512)
    far = np.array([-1e6, -3 * spread, 3 * spread, 1e6])
    return np.concatenate([halves, whole, random, far]).astype(np.float32)


@pytest.mark.parametrize("qtype", list(QTYPES))
@pytest.mark.parametrize("scale", [0.125, 0.0371])
def test_quantize_dequantize_round_trip_matches_ort(qtype: str, scale: float) -> None:
    """Q -> DQ, per tensor: Q outputs (half-to-even rounding, saturation) and DQ outputs equal onnxruntime's exactly."""
    _, qmin, qmax, opset = QTYPES[qtype]
    zero = qmin + (qmax - qmin + 1) // 3  # non-zero for every type
    x = _round_trip_data(scale, zero, qmin, qmax, np.random.default_rng(0))
    if scale == 0.125:  # a power of two: x / scale is exactly k + 0.5, so ties are really exercised
        assert np.any(np.abs(x / np.float32(scale) % 1 - 0.5) == 0)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"]),
        helper.make_node("Cast", ["q"], ["q32"], to=TensorProto.INT32),  # onnxruntime cannot return 4/2-bit arrays
    ]
    model = _model(nodes, [_float_input("x", x.shape)], [_output("y"), _output("q32", TensorProto.INT32)],
                   [_scale("s", scale), _integers("zp", zero, qtype)], opset)
    want_y, want_q = _run_ort(model, {"x": x})
    got_y, got_q = _run_executor(model, {"x": x})
    np.testing.assert_array_equal(want_q, _quantize(x, scale, zero, qtype))  # the reference itself is right
    np.testing.assert_array_equal(got_q, want_q)
    np.testing.assert_array_equal(got_y, want_y)


@pytest.mark.parametrize("qtype", ["uint8", "int8"])
def test_quantize_output_is_the_integers(qtype: str) -> None:
    """8-bit Q as a graph output: the executor's float32 values equal onnxruntime's integers exactly."""
    elem, qmin, qmax, _ = QTYPES[qtype]
    x = _round_trip_data(0.05, 3, qmin, qmax, np.random.default_rng(1))
    model = _model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"])], [_float_input("x", x.shape)],
                   [_output("q", elem)], [_scale("s", 0.05), _integers("zp", 3, qtype)], 17)
    (want,), (got,) = _run_ort(model, {"x": x}), _run_executor(model, {"x": x})
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_quantize_without_zero_point_is_uint8() -> None:
    """Q with no zero point: zero point 0 of type UINT8 (negative values saturate to 0), DQ likewise."""
    x = np.array([-3.0, -0.2, 0.0, 0.26, 1.5, 100.0, 1e4], np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s"], ["y"])]
    model = _model(nodes, [_float_input("x", x.shape)], [_output("q", TensorProto.UINT8), _output("y")], [_scale("s", 0.5)], 17)
    want_q, want_y = _run_ort(model, {"x": x})
    got_q, got_y = _run_executor(model, {"x": x})
    np.testing.assert_array_equal(got_q, want_q.astype(np.float32))
    np.testing.assert_array_equal(got_y, want_y)


@pytest.mark.parametrize("qtype", ["int8", "uint8", "int4", "uint2"])
def test_per_axis_quantize_and_asymmetric_weights_match_ort(qtype: str) -> None:
    """Per-axis Q on an activation (axis 1 of NCHW) and per-axis DQ of integer weights with non-zero zero points: exact."""
    _, qmin, qmax, opset = QTYPES[qtype]
    rng = np.random.default_rng(2)
    x = rng.normal(0, 2, (2, 4, 3, 5)).astype(np.float32)
    scale = np.array([0.05, 0.125, 0.3, 1.0], np.float32)
    zero = np.array([qmin, qmax, (qmin + qmax) // 2, qmin + 1], np.int64)
    weights = rng.integers(qmin, qmax + 1, (3, 6))  # extremes: checks integer subtraction does not wrap
    weights[0, :2] = qmin, qmax
    w_scale, w_zero = np.array([0.01, 0.5, 2.0], np.float32), np.array([qmax, qmin, qmin + 1], np.int64)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=1),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=1),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], axis=0),
    ]
    inits = [_scale("s", scale), _integers("zp", zero, qtype), _integers("w_q", weights, qtype),
             _scale("w_s", w_scale), _integers("w_zp", w_zero, qtype)]
    model = _model(nodes, [_float_input("x", x.shape)], [_output("y"), _output("w")], inits, opset)
    want, got = _run_ort(model, {"x": x}), _run_executor(model, {"x": x})
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(got[1], ((weights - w_zero[:, None]) * w_scale[:, None]).astype(np.float32))


def _conv_model(weight_type: str, act_type: str, opset: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray, float]:
    """x -> Q/DQ -> Conv(DQ(per-channel weights, axis 0), DQ(int32 bias)) -> Q/DQ, as the quantizer writes it."""
    x = rng.uniform(-1.0, 1.0, (4, 3, 12, 12)).astype(np.float32)
    w = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.2, 8).astype(np.float32)
    s_x, z_x = _activation_params(-1.0, 1.0, act_type)
    w_q, s_w = _symmetric_weights(w, weight_type, axis=0)
    s_b = (s_x * s_w).astype(np.float32)
    b_q = np.rint(b / s_b).astype(np.int64)
    # Output range from the float conv of the dequantized operands.
    x_dq = (_quantize(x, s_x, z_x, act_type) - z_x) * s_x
    y = torch.conv2d(torch.from_numpy(x_dq.astype(np.float32)), torch.from_numpy((w_q * s_w[:, None, None, None]).astype(np.float32)),
                     torch.from_numpy((b_q * s_b).astype(np.float32)), padding=1).numpy()
    s_y, z_y = _activation_params(float(y.min()), float(y.max()), act_type)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_zp"], ["b_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq", "b_dq"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["conv", "y_s", "y_zp"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_s", "y_zp"], ["y"]),
    ]
    inits = [
        _scale("x_s", s_x), _integers("x_zp", z_x, act_type),
        _integers("w_q", w_q, weight_type), _scale("w_s", s_w), _integers("w_zp", np.zeros(8, np.int64), weight_type),
        _integers("b_q", b_q, TensorProto.INT32), _scale("b_s", s_b), _integers("b_zp", np.zeros(8, np.int64), TensorProto.INT32),
        _scale("y_s", s_y), _integers("y_zp", z_y, act_type),
    ]
    return _model(nodes, [_float_input("x", x.shape)], [_output("y")], inits, opset), x, float(s_y)


@pytest.mark.parametrize("weight_type,act_type,opset", BIT_WIDTHS)
def test_qdq_conv_matches_ort(weight_type: str, act_type: str, opset: int) -> None:
    """Per-channel weight DQ -> Conv (+ int32 bias DQ) -> Q -> DQ: >= 99.9 % equal to onnxruntime, all within one step."""
    model, x, step = _conv_model(weight_type, act_type, opset, np.random.default_rng(3))
    (want,), (got,) = _run_ort(model, {"x": x}), _run_executor(model, {"x": x})
    assert len(np.unique(want)) > 2  # not degenerate
    _assert_within_one_step(got, want, step, fine_grid=act_type.endswith("16"))


@pytest.mark.parametrize("weight_type,act_type,opset", BIT_WIDTHS)
@pytest.mark.parametrize("layout", ["gemm_transB", "gemm", "matmul"])
def test_qdq_gemm_and_matmul_match_ort(weight_type: str, act_type: str, opset: int, layout: str) -> None:
    """Gemm with per-channel weights (transB=1: axis 0; transB=0: axis 1) and MatMul (B axis 1): >= 99.9 % equal, within one step."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1.0, 1.0, (64, 32)).astype(np.float32)
    w = rng.normal(0, 0.3, (10, 32)).astype(np.float32)  # (out, in)
    b = rng.normal(0, 0.2, 10).astype(np.float32)
    s_x, z_x = _activation_params(-1.0, 1.0, act_type)
    stored, axis = (w, 0) if layout == "gemm_transB" else (np.ascontiguousarray(w.T), 1)
    w_q, s_w = _symmetric_weights(stored, weight_type, axis=axis)
    s_b = (s_x * s_w).astype(np.float32)
    b_q = np.rint(b / s_b).astype(np.int64)
    x_dq = ((_quantize(x, s_x, z_x, act_type) - z_x) * s_x).astype(np.float32)
    w_dq = (w_q * (s_w[:, None] if axis == 0 else s_w[None, :])).astype(np.float32)
    y = (x_dq @ (w_dq.T if axis == 0 else w_dq)) + (b_q * s_b if layout != "matmul" else 0)
    s_y, z_y = _activation_params(float(y.min()), float(y.max()), act_type)
    if layout == "matmul":
        compute = [helper.make_node("MatMul", ["x_dq", "w_dq"], ["mm"])]
    else:
        compute = [helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_zp"], ["b_dq"], axis=0),
                   helper.make_node("Gemm", ["x_dq", "w_dq", "b_dq"], ["mm"], transB=int(layout == "gemm_transB"))]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"], axis=axis),
        *compute,
        helper.make_node("QuantizeLinear", ["mm", "y_s", "y_zp"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_s", "y_zp"], ["y"]),
    ]
    inits = [
        _scale("x_s", s_x), _integers("x_zp", z_x, act_type),
        _integers("w_q", w_q, weight_type), _scale("w_s", s_w), _integers("w_zp", np.zeros(10, np.int64), weight_type),
        _integers("b_q", b_q, TensorProto.INT32), _scale("b_s", s_b), _integers("b_zp", np.zeros(10, np.int64), TensorProto.INT32),
        _scale("y_s", s_y), _integers("y_zp", z_y, act_type),
    ]
    if layout == "matmul":
        inits = [i for i in inits if not i.name.startswith("b_")]
    model = _model(nodes, [_float_input("x", x.shape)], [_output("y")], inits, opset)
    (want,), (got,) = _run_ort(model, {"x": x}), _run_executor(model, {"x": x})
    _assert_within_one_step(got, want, float(s_y), fine_grid=act_type.endswith("16"))


@pytest.mark.parametrize("opset", [17, 21, 25])
def test_integer_domain_pad_slice_maxpool_match_ort(opset: int) -> None:
    """uint8 from Q -> Pad(constant_value = zero point) -> MaxPool -> Slice -> Reshape -> Flatten -> DQ: integers and floats exact."""
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (2, 3, 7, 6)).astype(np.float32)
    zero = 100
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
        helper.make_node("Pad", ["q", "pads", "zp"], ["padded"], mode="constant"),
        helper.make_node("MaxPool", ["padded"], ["pooled"], kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("Slice", ["pooled", "starts", "ends", "axes", "steps"], ["sliced"]),
        helper.make_node("Reshape", ["sliced", "shape"], ["reshaped"]),
        helper.make_node("Flatten", ["reshaped"], ["flat"], axis=1),
        helper.make_node("DequantizeLinear", ["flat", "s", "zp"], ["y"]),
        helper.make_node("DequantizeLinear", ["padded", "s", "zp"], ["padded_dq"]),
    ]
    inits = [
        _scale("s", 0.02), _integers("zp", zero, "uint8"),
        numpy_helper.from_array(np.array([0, 0, 2, 1, 0, 0, 1, 3], np.int64), "pads"),
        numpy_helper.from_array(np.array([1, 0], np.int64), "starts"),
        numpy_helper.from_array(np.array([INT64_MAX, 7], np.int64), "ends"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([2, 1], np.int64), "steps"),
        numpy_helper.from_array(np.array([0, 3, -1], np.int64), "shape"),
    ]
    outputs = [_output("y"), _output("flat", TensorProto.UINT8), _output("padded", TensorProto.UINT8), _output("padded_dq")]
    model = _model(nodes, [_float_input("x", x.shape)], outputs, inits, opset)
    want, got = _run_ort(model, {"x": x}), _run_executor(model, {"x": x})
    assert np.sum(want[2] == zero) > x.size // 10  # the padding really is the zero point
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w.astype(g.dtype))


@pytest.mark.parametrize("opset", [21, 25])
def test_float_ops_at_new_opsets_match_ort(opset: int) -> None:
    """Opset 21/25 forms (Pad with axes input, ReduceMean/Squeeze/Unsqueeze with axes inputs) run and match onnxruntime to 1e-6."""
    x = np.random.default_rng(6).normal(0, 1, (2, 3, 5, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Pad", ["x", "pads", "value", "pad_axes"], ["p"]),
        helper.make_node("ReduceMean", ["p", "r_axes"], ["r"], keepdims=1),
        helper.make_node("Squeeze", ["r", "sq_axes"], ["sq"]),
        helper.make_node("Unsqueeze", ["sq", "sq_axes"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 0, 2, 3], np.int64), "pads"),
        numpy_helper.from_array(np.array(0.5, np.float32), "value"),
        numpy_helper.from_array(np.array([2, -1], np.int64), "pad_axes"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "r_axes"),
        numpy_helper.from_array(np.array([3], np.int64), "sq_axes"),
    ]
    model = _model(nodes, [_float_input("x", x.shape)], [_output("y")], inits, opset)
    (want,), (got,) = _run_ort(model, {"x": x}), _run_executor(model, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ initializers and types


@pytest.mark.parametrize("weight_type,act_type,opset", BIT_WIDTHS)
def test_trainable_makes_only_float_scales_parameters(weight_type: str, act_type: str, opset: int) -> None:
    """trainable=True: float scales become Parameters; integer weights, int32 biases and zero points stay buffers."""
    model, _, _ = _conv_model(weight_type, act_type, opset, np.random.default_rng(7))
    module = OnnxModule(model, trainable=True)
    parameters = {name for name in module.initializer_names if isinstance(module.initializer(name), nn.Parameter)}
    assert parameters == {"x_s", "w_s", "b_s", "y_s"}
    holders = {"int8": torch.int8, "int4": torch.int8, "int2": torch.int8}
    assert module.initializer("w_q").dtype == holders[weight_type]
    act_holders = {"uint8": torch.uint8, "uint4": torch.uint8, "uint2": torch.uint8, "int8": torch.int8, "uint16": torch.uint16}
    assert module.initializer("x_zp").dtype == act_holders[act_type] and module.initializer("b_q").dtype == torch.int32
    assert module.initializer_types["w_q"] == QTYPES[weight_type][0]


@pytest.mark.parametrize("weight_type,act_type,opset", BIT_WIDTHS)
def test_initializer_arrays_keep_onnx_integer_types(weight_type: str, act_type: str, opset: int) -> None:
    """initializer_arrays() returns INT4/INT2/UINT4/... in their ml_dtypes types, so from_array writes the same ONNX tensor."""
    model, _, _ = _conv_model(weight_type, act_type, opset, np.random.default_rng(8))
    arrays = OnnxModule(model).initializer_arrays()
    assert arrays["w_q"].dtype == {"int8": np.int8, "int4": ml_dtypes.int4, "int2": ml_dtypes.int2}[weight_type]
    for init in model.graph.initializer:
        written = numpy_helper.from_array(arrays[init.name], init.name)
        assert written.data_type == init.data_type, init.name
        np.testing.assert_array_equal(numpy_helper.to_array(written), numpy_helper.to_array(init))


def test_sub_byte_constant_node_loads() -> None:
    """A Constant node holding INT4 values loads (as int8) and dequantizes exactly."""
    value = helper.make_tensor("c", TensorProto.INT4, [4], [-8, -1, 0, 7])
    nodes = [helper.make_node("Constant", [], ["w_q"], value=value),
             helper.make_node("DequantizeLinear", ["w_q", "s"], ["w"]),
             helper.make_node("Add", ["x", "w"], ["y"])]
    model = _model(nodes, [_float_input("x", (4,))], [_output("y")], [_scale("s", 0.5)], 21)
    x = np.zeros(4, np.float32)
    (want,), (got,) = _run_ort(model, {"x": x}), _run_executor(model, {"x": x})
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, [-4.0, -0.5, 0.0, 3.5])


def test_runtime_zero_point_is_rejected() -> None:
    """A zero point computed at run time is refused with a GraphError naming the node (its type fixes the range)."""
    nodes = [helper.make_node("Identity", ["zp"], ["zp2"]), helper.make_node("QuantizeLinear", ["x", "s", "zp2"], ["q"], name="q")]
    graph = helper.make_graph(nodes, "g", [_float_input("x", (3,)), helper.make_tensor_value_info("zp", TensorProto.UINT8, [])],
                              [_output("q", TensorProto.UINT8)], [_scale("s", 0.1)])
    with pytest.raises(GraphError, match=r"QuantizeLinear node 'q'.*initializer or a Constant"):
        OnnxModule(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


# ------------------------------------------------------------------------------------------ gradients


def _q_dq_model(qtype: str, scale: float, zero: int, shape: tuple[int, ...]) -> onnx.ModelProto:
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])]
    return _model(nodes, [_float_input("x", shape)], [_output("y")], [_scale("s", scale), _integers("zp", zero, qtype)], QTYPES[qtype][3])


def _gradient_data(scale: float, zero: int, qmin: int, qmax: int, n: int, seed: int) -> np.ndarray:
    """Values over 1.5x the representable range, kept away from the clamp edges (where the mask is a convention)."""
    lo, hi = (qmin - zero) * scale, (qmax - zero) * scale
    x = np.random.default_rng(seed).uniform(lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo), n).astype(np.float32)
    edges = np.abs(x[:, None] - np.array([[lo - 0.5 * scale, hi + 0.5 * scale]], np.float32)) < 0.05 * scale
    return x[~edges.any(axis=1)]


@pytest.mark.parametrize("qtype", ["uint8", "int8", "uint4", "int2"])
def test_input_gradient_is_straight_through(qtype: str) -> None:
    """d loss / d x through Q -> DQ is the STE gradient: g inside [qmin, qmax] (rtol 1e-6), exactly 0 outside."""
    _, qmin, qmax, _ = QTYPES[qtype]
    scale, zero = 0.05, qmin + (qmax - qmin + 1) // 3
    x_np = _gradient_data(scale, zero, qmin, qmax, 2000, seed=9)
    module = OnnxModule(_q_dq_model(qtype, scale, zero, x_np.shape))
    x = torch.from_numpy(x_np).requires_grad_()
    g = torch.from_numpy(np.random.default_rng(10).normal(0, 1, x_np.shape).astype(np.float32))
    y = module(x)
    (y * g).sum().backward()
    unclamped = np.rint(x_np / np.float32(scale)) + zero
    inside = (unclamped >= qmin) & (unclamped <= qmax)
    assert 0.3 < inside.mean() < 0.9  # both regions are exercised
    np.testing.assert_array_equal(x.grad.numpy()[~inside], 0.0)
    np.testing.assert_allclose(x.grad.numpy()[inside], g.numpy()[inside], rtol=1e-6)
    with torch.no_grad():  # the gradient path computes the same forward values as inference
        np.testing.assert_array_equal(module(x).numpy(), y.detach().numpy())


@pytest.mark.parametrize("qtype", ["uint8", "int4", "uint2"])
def test_scale_gradient_is_lsq(qtype: str) -> None:
    """d loss / d scale of a trainable Q -> DQ scale is finite, non-zero and the LSQ value:
    sum g * (round(x/s) - x/s | qmin-zp | qmax-zp), rtol 1e-4."""
    _, qmin, qmax, _ = QTYPES[qtype]
    scale, zero = 0.05, qmin + (qmax - qmin + 1) // 3
    x_np = _gradient_data(scale, zero, qmin, qmax, 2000, seed=11)
    module = OnnxModule(_q_dq_model(qtype, scale, zero, x_np.shape), trainable=True)
    s = module.initializer("s")
    assert isinstance(s, nn.Parameter) and not isinstance(module.initializer("zp"), nn.Parameter)
    g_np = np.random.default_rng(12).normal(0, 1, x_np.shape)
    (module(torch.from_numpy(x_np)) * torch.from_numpy(g_np.astype(np.float32))).sum().backward()
    v = (x_np / np.float32(scale)).astype(np.float64)  # rounded as the executor rounds: in float32
    unclamped = np.rint(v) + zero
    local = np.where(unclamped < qmin, qmin - zero, np.where(unclamped > qmax, qmax - zero, np.rint(v) - v))
    expected = float(np.sum(g_np * local))
    assert s.grad is not None and torch.isfinite(s.grad).all() and float(s.grad) != 0.0
    np.testing.assert_allclose(float(s.grad), expected, rtol=1e-4)


@pytest.mark.parametrize("weight_type,act_type,opset", BIT_WIDTHS)
def test_conv_gradients_reach_every_scale_and_the_input(weight_type: str, act_type: str, opset: int) -> None:
    """Through a QDQ Conv, every trainable scale (per-channel weight scale included) and the input get finite, non-zero gradients."""
    model, x_np, _ = _conv_model(weight_type, act_type, opset, np.random.default_rng(13))
    module = OnnxModule(model, trainable=True)
    x = torch.from_numpy(x_np).requires_grad_()
    module(x).square().mean().backward()
    for name in ("x_s", "w_s", "b_s", "y_s"):
        grad = module.initializer(name).grad
        assert grad is not None and grad.shape == module.initializer(name).shape, name
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert module.initializer("w_s").grad.ne(0).sum() >= 6  # per channel, not just one
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(module.initializer(n).grad is None for n in ("w_q", "b_q", "x_zp"))  # integer buffers


def test_learned_rounding_can_replace_integer_weights() -> None:
    """set_initializer: DQ accepts float values in place of its integer initializer (a learned rounding), with gradients to them."""
    model, x_np, _ = _conv_model("int4", "uint4", 21, np.random.default_rng(14))
    module = OnnxModule(model, trainable=True)
    integers = module.initializer("w_q")
    soft = nn.Parameter(integers.to(torch.float32) + 0.25)
    reference = module(torch.from_numpy(x_np)).detach()
    module.set_initializer("w_q", integers.to(torch.float32))  # the same values, as floats
    np.testing.assert_array_equal(module(torch.from_numpy(x_np)).detach().numpy(), reference.numpy())
    module.set_initializer("w_q", soft)
    module(torch.from_numpy(x_np)).square().mean().backward()
    assert soft.grad is not None and torch.isfinite(soft.grad).all() and soft.grad.abs().sum() > 0


def test_per_axis_gradients_are_ste_and_lsq_per_channel() -> None:
    """Per-axis Q -> DQ (axis 1, non-zero zero points): x gets the STE gradient (rtol 1e-6, exact 0 outside), each scale its LSQ value (rtol 1e-4)."""
    qtype, (_, qmin, qmax, opset) = "uint4", QTYPES["uint4"]
    scale, zero = np.array([0.05, 0.2, 0.125], np.float32), np.array([0, 8, 15], np.int64)
    rng = np.random.default_rng(15)
    x_np = (rng.uniform(-12, 28, (16, 3, 40)) * scale[None, :, None]).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=1)]
    model = _model(nodes, [_float_input("x", x_np.shape)], [_output("y")], [_scale("s", scale), _integers("zp", zero, qtype)], opset)
    module = OnnxModule(model, trainable=True)
    x = torch.from_numpy(x_np).requires_grad_()
    g_np = rng.normal(0, 1, x_np.shape)
    y = module(x)
    (y * torch.from_numpy(g_np.astype(np.float32))).sum().backward()
    np.testing.assert_array_equal(y.detach().numpy(), _run_ort(model, {"x": x_np})[0])
    v = (x_np / scale[None, :, None]).astype(np.float64)
    z = zero[None, :, None]
    unclamped = np.rint(v) + z
    inside = (unclamped >= qmin) & (unclamped <= qmax)
    assert 0.2 < inside.mean() < 0.9
    np.testing.assert_array_equal(x.grad.numpy()[~inside], 0.0)
    np.testing.assert_allclose(x.grad.numpy()[inside], g_np.astype(np.float32)[inside], rtol=1e-6)
    local = np.where(unclamped < qmin, qmin - z, np.where(unclamped > qmax, qmax - z, np.rint(v) - v))
    np.testing.assert_allclose(module.initializer("s").grad.numpy(), np.sum(g_np * local, axis=(0, 2)), rtol=1e-4)
