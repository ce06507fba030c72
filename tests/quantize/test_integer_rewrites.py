"""Graph rewrites before annotation keep the function: BN to depthwise Conv, ReduceMean to GlobalAveragePool,
HardSwish/HardSigmoid decomposed (8-bit activations only); shape folding keeps types and dynamic shapes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from toolchain.onnxio.passes import run_passes
from toolchain.onnxio.passes.shape_folding import FoldStaticShapesPass
from toolchain.quantize.fold.batchnorm import StandaloneBatchNormToConvPass
from toolchain.quantize.fold.integer_rewrites import integer_rewrite_passes

TOLERANCE = 1e-5  # max|diff| / max|reference|: float32 rewrites differ only in rounding
RNG = np.random.default_rng(0)


def _model(nodes, inits, in_shape=("N", 4, 5, 6), out_name="y", opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _same_function(before: onnx.ModelProto, after: onnx.ModelProto, x: np.ndarray) -> bool:
    want, got = _run(before, x), _run(after, x)
    return got.shape == want.shape and float(np.abs(got - want).max() / np.abs(want).max()) <= TOLERANCE


def _copy(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


X = RNG.standard_normal((2, 4, 5, 6)).astype(np.float32) * 4


def test_standalone_batchnorm_becomes_an_equal_depthwise_conv():
    """A BN after a Relu (DenseNet's pre-activation) becomes a grouped 1x1 Conv with the same output (1e-5)."""
    stats = {"s": RNG.random(4).astype(np.float32) + 0.5, "b": RNG.standard_normal(4).astype(np.float32),
             "m": RNG.standard_normal(4).astype(np.float32), "v": RNG.random(4).astype(np.float32) + 0.2}
    model = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["y"], name="bn")],
                   stats)
    rewritten = _copy(model)
    assert StandaloneBatchNormToConvPass()(rewritten).modified
    assert [n.op_type for n in rewritten.graph.node] == ["Relu", "Conv"]
    assert _same_function(model, rewritten, X)


def test_spatial_reduce_mean_becomes_global_average_pool():
    """ReduceMean over axes 2, 3 (keepdims 0 and 1) becomes GlobalAveragePool (+ Flatten): same values; a mean
    over the channels is left alone."""
    for keepdims in (0, 1):
        model = _model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=keepdims)], {})
        rewritten = _copy(model)
        run_passes(rewritten, integer_rewrite_passes())
        assert "ReduceMean" not in {n.op_type for n in rewritten.graph.node} and _same_function(model, rewritten, X)
    channels = _model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1])], {})
    assert not integer_rewrite_passes()[0](_copy(channels)).modified


def test_hard_activations_are_decomposed_only_for_8_bit_activations():
    """HardSwish and HardSigmoid (custom alpha/beta) become Mul/Add/Clip with the same values at A8; at A4 they stay
    whole (onnxruntime emulates below 8 bits, and the decomposition would add roundings)."""
    model = _model([helper.make_node("HardSwish", ["x"], ["h"]), helper.make_node("HardSigmoid", ["h"], ["y"], alpha=0.3, beta=0.4)], {})
    rewritten = _copy(model)
    run_passes(rewritten, integer_rewrite_passes(8))
    ops = [n.op_type for n in rewritten.graph.node]
    assert "HardSwish" not in ops and "HardSigmoid" not in ops and ops.count("Clip") == 2
    assert _same_function(model, rewritten, X)
    kept = _copy(model)
    run_passes(kept, integer_rewrite_passes(4))
    assert [n.op_type for n in kept.graph.node] == ["HardSwish", "HardSigmoid"]


def test_shape_folding_keeps_dynamic_batch_and_the_types_of_folded_values():
    """view(x.size(0), 2, -1) becomes Reshape(x, [0, 2, -1]) (the batch stays dynamic); an Equal folded to a
    constant stays BOOL, so the Where that reads it still loads in onnxruntime."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]), helper.make_node("Concat", ["batch1", "tail"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["r"]),
             helper.make_node("Gather", ["shape", "one"], ["channels"], axis=0),
             helper.make_node("Equal", ["channels", "four"], ["is_four"]),
             helper.make_node("Where", ["is_four", "r", "zero_f"], ["y"])]
    inits = {"zero": np.array(0, np.int64), "one": np.array(1, np.int64), "axis0": np.array([0], np.int64),
             "tail": np.array([2, -1], np.int64), "four": np.array(4, np.int64), "zero_f": np.array(0.0, np.float32)}
    model = _model(nodes, inits)
    folded = _copy(model)
    run_passes(folded, [FoldStaticShapesPass()])
    reshape = next(n for n in folded.graph.node if n.op_type == "Reshape")
    target = next(i for i in folded.graph.initializer if i.name == reshape.input[1])
    assert numpy_helper.to_array(target).tolist() == [0, 2, -1]
    assert next(i for i in folded.graph.initializer if i.name == "is_four").data_type == onnx.TensorProto.BOOL
    assert _same_function(model, folded, X) and _same_function(model, folded, X[:1])


def test_a_fused_clip_output_grid_is_capped_at_the_clip_bound():
    """A step grown past Clip(0, 1)'s bound (as reconstruction can learn) is capped so the grid ends at 1 at most
    (onnxruntime drops the Clip only then); a step within the bound is kept."""
    from toolchain.quantize.annotate.placement import annotate
    from toolchain.quantize.config import QuantConfig
    from toolchain.quantize.driver import cap_to_fused_clips
    from toolchain.quantize.qparams import activation_type, one_sided_params

    w = RNG.standard_normal((4, 4, 1, 1)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                    helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip")],
                   {"w": w, "lo": np.array(0, np.float32), "hi": np.array(1, np.float32)})
    plan = annotate(model, QuantConfig())
    root = plan.root("y")
    grown = {t: one_sided_params(1.05, activation_type(8)) for t in plan.activations}
    capped = cap_to_fused_clips(model, plan, grown)[root]
    assert float(np.float32(capped.scale) * np.float32(255)) <= 1.0 < 1.05
    within = {t: one_sided_params(0.9, activation_type(8)) for t in plan.activations}
    assert float(cap_to_fused_clips(model, plan, within)[root].scale) == float(within[root].scale)


def test_a_hardswish_output_keeps_its_negative_tail_on_a_4_bit_grid():
    """HardSwish's values stay above -3/8 (rules.OUTPUT_FLOORS): annotation records that floor, and the
    4-bit MSE range keeps at least one level below zero, where the plain two-sided search shrinks the
    small tail until the zero point rounds to 0 and maps every negative value to 0 (a systematic shift)."""
    from toolchain.quantize.annotate.placement import annotate
    from toolchain.quantize.calibrate.ranges import activation_params, constant_observation
    from toolchain.quantize.config import QuantConfig
    from toolchain.quantize.qparams import activation_type

    w = RNG.standard_normal((4, 4, 1, 1)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                    helper.make_node("HardSwish", ["c"], ["y"], name="hswish")], {"w": w})
    spec = annotate(model, QuantConfig(w_bits=4, a_bits=4)).activations["y"]
    assert spec.floor == -0.375 and not spec.one_sided
    pre = RNG.standard_normal(200_000).astype(np.float32) * 3
    values = pre * np.clip(pre / 6 + 0.5, 0, 1)  # HardSwish of a wide conv output: a long top, a short tail
    obs, qtype = constant_observation(values), activation_type(4)
    kept = activation_params(obs, spec, "mse", qtype)
    assert int(kept.zero_point) >= 1 and -float(kept.scale) * int(kept.zero_point) <= -0.375
    from dataclasses import replace
    cut = activation_params(obs, replace(spec, floor=None), "mse", qtype)
    assert int(cut.zero_point) == 0  # what the rule exists for: without it the tail is cut
    tail = values[values < 0]
    shift_kept = abs(float(kept.fake_quantize(tail).mean() - tail.mean()))
    shift_cut = abs(float(cut.fake_quantize(tail).mean() - tail.mean()))
    assert shift_cut == abs(float(tail.mean())) and shift_kept < shift_cut / 2  # the mean of the tail survives


def test_the_hardswish_floor_is_carried_through_pools_and_gates_only():
    """A pool of HardSwish outputs and their product with a [0, 1] gate (the SE scaling) keep the -3/8 floor;
    a product with an unbounded tensor does not (it can go below -3/8)."""
    from toolchain.quantize.annotate.placement import annotate
    from toolchain.quantize.config import QuantConfig

    w = RNG.standard_normal((4, 4, 1, 1)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                    helper.make_node("HardSwish", ["c"], ["h"], name="hswish"),
                    helper.make_node("GlobalAveragePool", ["h"], ["p"], name="pool"),
                    helper.make_node("HardSigmoid", ["p"], ["g"], name="gate", alpha=1 / 6),
                    helper.make_node("Mul", ["h", "g"], ["se"], name="scale"),
                    helper.make_node("Conv", ["se", "w"], ["c2"], name="conv2"),
                    helper.make_node("Mul", ["h", "c2"], ["y"], name="product")], {"w": w})
    specs = annotate(model, QuantConfig(w_bits=4, a_bits=4)).activations
    assert specs["h"].floor == specs["p"].floor == specs["se"].floor == -0.375
    assert specs["c2"].floor is None and specs["y"].floor is None
