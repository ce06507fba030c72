"""Mixed precision: the allocation is the exact optimum, the sensitivity is what it says, the model carries the bits."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from toolchain.cli.commands import cli
from toolchain.errors import ConfigError
from toolchain.onnxio import qdq_names
from toolchain.quantize.config import ActivationBudget, BitBudget, QuantConfig
from toolchain.quantize.mixed_precision import (
    ActivationProbe,
    LayerSensitivity,
    TensorSensitivity,
    allocate,
    allocate_activations,
    measure_sensitivity,
)
from toolchain.quantize.report_sections import ActivationAllocationReport, WeightAllocationReport

CHOICES = (2, 4, 8)


def _layers(rng: np.random.Generator, count: int) -> list[LayerSensitivity]:
    layers = []
    for i in range(count):
        base = rng.uniform(0.01, 3.0)
        layers.append(LayerSensitivity(f"n{i}", f"w{i}", int(rng.integers(10, 2000)),
                                       {2: base, 4: base * rng.uniform(0.01, 0.2), 8: base * rng.uniform(1e-5, 1e-3)}))
    return layers


@pytest.mark.parametrize("seed", range(8))
def test_allocation_is_the_exact_optimum_of_the_additive_model(seed):
    """Rule: allocate() finds the least total KL among all 3^6 choices that fit the budget (brute force, rel. 1e-12),
    and its size never exceeds the budget."""
    rng = np.random.default_rng(seed)
    layers = _layers(rng, 6)
    average = float(rng.uniform(2.0, 8.0))
    allocation = allocate(layers, BitBudget(average_bits=average, choices=CHOICES))
    total = sum(layer.params for layer in layers)
    best = min(sum(layer.kl[b] for layer, b in zip(layers, bits))
               for bits in itertools.product(CHOICES, repeat=len(layers))
               if sum(layer.params * b for layer, b in zip(layers, bits)) <= round(average * total))
    assert allocation.predicted_kl == pytest.approx(best, rel=1e-12)
    chosen = dict(allocation.layer_bits)
    assert allocation.size_bits == sum(layer.params * chosen[layer.node] for layer in layers) <= round(average * total)


def test_a_budget_outside_the_possible_sizes_names_the_possible_ones():
    """Rule: below all-2-bit or above all-8-bit is refused, naming the possible range in bits and in bytes."""
    layers = [LayerSensitivity("a", "wa", 100, {2: 1.0, 4: 0.1, 8: 0.0}), LayerSensitivity("b", "wb", 300, {2: 1.0, 4: 0.1, 8: 0.0})]
    with pytest.raises(ConfigError, match=r"below the smallest possible.*2\.00\.\.8\.00 average bits, or 100\.\.400 bytes"):
        allocate(layers, BitBudget(average_bits=1.9, choices=CHOICES))
    with pytest.raises(ConfigError, match="above the largest possible"):
        allocate(layers, BitBudget(size_bytes=401, choices=CHOICES))
    assert dict(allocate(layers, BitBudget(size_bytes=400, choices=CHOICES)).layer_bits) == {"a": 8, "b": 8}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bitalloc")
    model, calib = folder / "d.onnx", folder / "c.npz"
    runner = CliRunner()
    assert runner.invoke(cli, ["export", "digits_resnet", "-o", str(model), "-q"]).exit_code == 0
    assert runner.invoke(cli, ["generate", str(model), "-n", "64", "--preset", "fast", "-o", str(calib), "-q"]).exit_code == 0
    return model, calib


def _onnxruntime_mean_kl(reference_model: onnx.ModelProto, model: onnx.ModelProto, inputs: np.ndarray) -> float:
    """Mean over the inputs of KL(softmax of reference_model || softmax of model), both run in onnxruntime (float64)."""
    def log_softmax(proto):
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: inputs})[0].astype(np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    reference = log_softmax(reference_model)
    return float(np.mean(np.sum(np.exp(reference) * (reference - log_softmax(model)), axis=1)))


@pytest.mark.parametrize("rounding", ["nearest", "compensated"])
def test_sensitivity_is_the_kl_onnxruntime_measures_for_that_layer_alone(digits, rounding):
    """Rule: a layer's sensitivity at b bits is the mean KL between the float model and the float model with only
    that layer's weights quantized (as the quantizer would: rounded to nearest, or compensated by the layer's input
    Hessian), here recomputed in onnxruntime (rel. 1e-3: torch and onnxruntime round float32 differently)."""
    from toolchain.quantize.annotate.placement import annotate
    from toolchain.quantize.calibrate.gptq import compensated_weight, input_hessians
    from toolchain.quantize.calibrate.ranges import weight_params
    from toolchain.quantize.fold.prepare import prepare_float_model
    from toolchain.quantize.qparams import weight_type

    model, calib = digits
    inputs = np.load(calib)["inputs"]
    config = QuantConfig(a_bits=4, bit_budget=BitBudget(average_bits=4.0, rounding=rounding))
    float_model, _ = prepare_float_model(onnx.load(str(model)), config)
    plan = annotate(float_model, config)
    layers = measure_sensitivity(float_model, plan, inputs, config)
    spec = list(plan.weights.values())[2]
    layer = next(layer for layer in layers if layer.node == spec.node)

    quantized = onnx.ModelProto()
    quantized.CopyFrom(float_model)
    init = next(t for t in quantized.graph.initializer if t.name == spec.tensor)
    weight = numpy_helper.to_array(init)
    params = weight_params(weight, spec.axis, weight_type(2), "mse")
    fake = (params.fake_quantize(weight) if rounding == "nearest" else
            compensated_weight(weight, spec.axis, params, input_hessians(float_model, plan, inputs)[spec.tensor]))
    fake = fake.astype(np.float32)
    init.CopyFrom(numpy_helper.from_array(fake, spec.tensor))
    expected = _onnxruntime_mean_kl(float_model, quantized, inputs)
    assert expected > 1e-4 and layer.kl[2] == pytest.approx(expected, rel=1e-3)


def _quantized_report(digits, out, *args: str) -> dict:
    """`toolchain quantize` of the digits model to `out` with `args`; its report (the command must succeed)."""
    model, calib = digits
    result = CliRunner().invoke(cli, ["quantize", str(model), "--calib", str(calib), *args, "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return json.loads(out.with_name(out.stem + ".report.json").read_text())


def test_the_mixed_model_carries_each_layers_bits_and_fits_the_budget(digits, tmp_path):
    """Rule: `quantize --weight-bits-budget` writes each layer's allocated bits into the QDQ model (8-bit layers in
    INT8, 2- and 4-bit layers in INT4 containers holding only their width's values, as onnxruntime loads them); the
    weights fit the budget; the report lists every layer's sensitivity per candidate, its bits and the predicted and
    measured KL."""
    out = tmp_path / "m.onnx"
    report = _quantized_report(digits, out, "--a-bits", "4", "--weight-bits-budget", "3.5")
    mixed = report["mixed_precision"]
    allocated = {node: bits for node, bits in mixed["layer_bits"]}
    assert len(set(allocated.values())) > 1  # a real mix at 3.5 bits, not one width
    assert mixed["size_bits"] <= mixed["budget_bits"] == round(3.5 * mixed["total_params"])
    assert all(set(layer["kl"]) == {"2", "3", "4", "8"} and layer["bits"] == allocated[layer["node"]] for layer in mixed["layers"])
    # the allocation's prediction is the sum of the chosen widths' KL (the additive model), to float rounding
    assert mixed["predicted_kl"] == pytest.approx(sum(layer["kl"][str(layer["bits"])] for layer in mixed["layers"]),
                                                  rel=1e-9)
    assert 0 < mixed["measured_kl"] < float("inf")
    # the typed section read back (a resumed run) writes the same keys, in the same order, with the same values
    assert json.dumps(WeightAllocationReport.from_dict(mixed).to_dict()) == json.dumps(mixed)
    qdq = onnx.load(str(out))
    inits = {t.name: t for t in qdq.graph.initializer}
    for layer in report["layers"]:
        if layer.get("weight_bits"):
            bits = allocated[layer["node"]]
            assert layer["weight_bits"] == bits
            node = next(n for n in qdq.graph.node if n.name == layer["node"])
            dq = next(n for n in qdq.graph.node if n.output[0] == node.input[1])
            tensor = inits[dq.input[0]]
            assert tensor.data_type == (onnx.TensorProto.INT8 if bits == 8 else onnx.TensorProto.INT4), layer["node"]
            values = numpy_helper.to_array(tensor).astype(np.int32)
            assert values.min() >= -(1 << (bits - 1)) and values.max() <= (1 << (bits - 1)) - 1, layer["node"]


def test_native_storage_that_onnxruntime_cannot_load_is_a_one_line_error(digits, tmp_path):
    """Rule: native INT4 activations next to 8-bit weights, which onnxruntime 1.32's fusion makes an invalid graph of,
    exit 2 naming --low-bit-storage ort, not an internal error (this once crashed)."""
    model, calib = digits
    result = CliRunner().invoke(cli, ["quantize", str(model), "--calib", str(calib), "--a-bits", "4", "--w-bits", "8",
                                      "--low-bit-storage", "native", "-o", str(tmp_path / "n.onnx")])
    assert result.exit_code == 2 and "use --low-bit-storage ort" in result.stderr and not (tmp_path / "n.onnx").exists()


@pytest.mark.parametrize("args, needle", [
    (["--weight-bits-budget", "3", "--target", "openvino", "--w-bits-choices", "2,4,8", "--a-bits", "8"],
     "--target openvino supports --w-bits 4/8, not 2"),
    (["--weight-bits-budget", "3", "--size-budget", "10KB"], "give one budget"),
    (["--w-bits-choices", "2,4"], "add --weight-bits-budget or --size-budget"),
    (["--sensitivity-rounding", "nearest"], "--sensitivity-rounding applies to mixed precision under a budget"),
    (["--weight-bits-budget", "3", "--first-last-8bit"], "drop one of the two"),
    (["--size-budget", "lots"], "--size-budget 'lots' is not a size"),
    (["--weight-bits-budget", "1.5"], "below the smallest possible"),
    (["--a-bits-budget", "9"], "give 4.00..8.00 average bits per activation value"),
    (["--a-bits-budget", "5", "--a-bits-choices", "4"], "--a-bits-choices 4: give two or more of"),
    (["--a-bits-choices", "4,8"], "add --a-bits-budget"),
    (["--a-bits-budget", "5", "--target", "openvino"], "--target openvino runs one activation width (8)"),
    (["--a-bits-budget", "10", "--target", "qnn"], "--target qnn takes one activation width"),
    (["--a-bits-budget", "5", "--first-last-8bit"], "drop one of the two"),
])
def test_bad_budgets_are_one_line_errors(digits, tmp_path, args, needle):
    """Rule: unsupported candidates, two budgets, candidates or a sensitivity rounding without a budget, the academic setting with a budget, an
    unreadable size and an impossible budget each exit 2 with one line saying what to change, writing nothing; the
    same for activation budgets (impossible, one candidate, candidates alone, a target with one activation width,
    qnn whose 8/16-bit regions would need conversions)."""
    model, calib = digits
    result = CliRunner().invoke(cli, ["quantize", str(model), "--calib", str(calib), "-o", str(tmp_path / "m.onnx"), *args])
    assert result.exit_code == 2 and needle in result.stderr, result.output
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("storage", ["ort", "native"])
def test_three_bit_weights_are_held_in_int4_with_three_bit_values(digits, tmp_path, storage):
    """Rule: --w-bits 3 writes every weight in an INT4 tensor (ONNX has no 3-bit type) holding values in [-4, 3] only,
    in both storages; a target without 3-bit weights (openvino) refuses it naming its widths."""
    model, calib = digits
    out = tmp_path / "w3.onnx"
    result = CliRunner().invoke(cli, ["quantize", str(model), "--calib", str(calib), "--w-bits", "3", "--a-bits", "8",
                                      "--low-bit-storage", storage, "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    weights = [t for t in onnx.load(str(out)).graph.initializer if qdq_names.is_weight_integers(t.name)]
    assert weights and all(t.data_type == onnx.TensorProto.INT4 for t in weights)
    values = np.concatenate([numpy_helper.to_array(t).astype(np.int32).ravel() for t in weights])
    assert values.min() == -4 and values.max() == 3
    refused = CliRunner().invoke(cli, ["quantize", str(model), "--calib", str(calib), "--w-bits", "3", "--target", "openvino",
                                       "-o", str(tmp_path / "ov.onnx")])
    assert refused.exit_code == 2 and "supports --w-bits 4/8, not 3" in refused.stderr


def test_compensated_rounding_lowers_the_output_error_and_stays_on_the_grid():
    """Rule: compensated rounding (quant.gptq) gives every weight a value of the quantizer's grid and,
    on correlated inputs, a smaller output error ||(W - Q) X||^2 than rounding to nearest at 2, 3 and 4 bits (by at
    least 10 %: measured 26-30 % here); with uncorrelated inputs (H = I) there is nothing to compensate and it is
    rounding to nearest exactly."""
    from toolchain.quantize.calibrate.gptq import LayerHessian, compensated_weight
    from toolchain.quantize.calibrate.ranges import weight_params
    from toolchain.quantize.qparams import weight_type

    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((48, 3000))
    inputs[1:] += 0.8 * inputs[:-1]  # neighbouring inputs correlated, as neighbouring pixels are
    weight = rng.standard_normal((24, 48)).astype(np.float32)
    hessian = LayerHessian((inputs @ inputs.T / inputs.shape[1])[None])
    for bits in (2, 3, 4):
        params = weight_params(weight, 0, weight_type(bits), "mse")
        nearest, compensated = params.fake_quantize(weight), compensated_weight(weight, 0, params, hessian)
        steps = compensated / params.scale[:, None]
        assert np.allclose(steps, np.round(steps), atol=1e-4)
        assert np.round(steps).min() >= params.low and np.round(steps).max() <= params.qtype.qmax
        error = lambda q: float(np.sum(((weight - q) @ inputs) ** 2))  # noqa: E731
        assert error(compensated) < 0.9 * error(nearest), bits
    params = weight_params(weight, 0, weight_type(2), "mse")
    assert np.array_equal(compensated_weight(weight, 0, params, LayerHessian(np.eye(48)[None])), params.fake_quantize(weight))


@pytest.mark.parametrize("groups, strides, pads", [(1, (1, 1), (1, 1, 1, 1)), (2, (2, 2), (1, 0, 1, 0)), (6, (1, 2), (0, 0, 0, 0))])
def test_patch_columns_are_what_the_convolution_multiplies(groups, strides, pads):
    """Rule: the columns H is built from are the convolution's input patches in its weight rows' element order, per
    group: multiplying them by the reshaped weight gives torch's conv2d (abs. 1e-4), for grouped, strided and
    asymmetrically padded convolutions."""
    import torch

    from toolchain.quantize.calibrate.gptq import _columns, _Patches

    torch.manual_seed(0)
    values, weight = torch.randn(2, 6, 9, 9), torch.randn(6, 6 // groups, 3, 3)
    top, left, bottom, right = pads
    patch = _Patches("x", "conv", (3, 3), strides, (1, 1), (left, right, top, bottom), groups)
    columns = _columns(values, patch)
    per_group = 6 // groups
    products = torch.stack([weight[g * per_group:(g + 1) * per_group].reshape(per_group, -1) @ columns[g] for g in range(groups)])
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(values, (left, right, top, bottom)), weight,
                                          stride=strides, groups=groups)
    got = products.reshape(6, 2, -1).permute(1, 0, 2).reshape(expected.shape)
    assert torch.allclose(got, expected, atol=1e-4)


def test_input_hessians_are_the_layers_input_second_moments(digits):
    """Rule: a layer's H is E[x x^T] over its input patches on the calibration set: for the classifier (a Gemm) the
    mean outer product of its input rows as onnxruntime computes them (rel. 1e-4; 64 inputs, nothing sampled)."""
    from toolchain.onnxio.sessions import exposing, inference_session
    from toolchain.quantize.annotate.placement import annotate
    from toolchain.quantize.calibrate.gptq import input_hessians
    from toolchain.quantize.fold.prepare import prepare_float_model

    model, calib = digits
    inputs = np.load(calib)["inputs"]
    config = QuantConfig(a_bits=4)
    float_model, _ = prepare_float_model(onnx.load(str(model)), config)
    plan = annotate(float_model, config)
    hessians = input_hessians(float_model, plan, inputs)
    assert set(hessians) == set(plan.weights)  # every layer of this model is understood
    gemm = next(n for n in float_model.graph.node if n.op_type == "Gemm")
    with exposing(float_model, [gemm.input[0]]) as probe:
        session = inference_session(probe)
    rows = session.run([gemm.input[0]], {session.get_inputs()[0].name: inputs})[0].astype(np.float64)
    np.testing.assert_allclose(hessians[gemm.input[1]].matrix[0], rows.T @ rows / len(rows), rtol=1e-4, atol=1e-7)


def test_a_budget_without_candidates_takes_the_targets_widths():
    """Rule: a BitBudget that names no candidates gets the target's widths among 2, 3, 4, 8 (OpenVINO: 4 and 8; onnxruntime
    x86: all four), so a Python caller need not know them; explicit candidates the target lacks are still refused; the
    filled-in candidates survive the config's JSON round trip."""
    openvino = QuantConfig(target="openvino", a_bits=8, bit_budget=BitBudget(average_bits=6.0))
    assert openvino.bit_budget.choices == (4, 8)
    assert QuantConfig(a_bits=4, bit_budget=BitBudget(average_bits=3.0)).bit_budget.choices == (2, 3, 4, 8)
    assert QuantConfig.from_dict(openvino.to_dict()) == openvino
    with pytest.raises(ConfigError, match="supports --w-bits 4/8, not 2"):
        QuantConfig(target="openvino", a_bits=8, bit_budget=BitBudget(average_bits=6.0, choices=(2, 8)))


@pytest.mark.parametrize("seed", range(4))
def test_activation_allocation_is_the_exact_optimum_of_the_additive_model(seed):
    """Rule: allocate_activations() finds the least total KL among all 2^8 choices of 4 or 8 bits whose mean bits
    per value fit the budget (brute force, rel. 1e-12)."""
    rng = np.random.default_rng(seed)
    tensors = [TensorSensitivity(f"t{i}", int(rng.integers(10, 5000)), {4: (base := rng.uniform(0.01, 1.0)),
                                                                       8: base * rng.uniform(1e-4, 1e-2)})
               for i in range(8)]
    average = float(rng.uniform(4.2, 7.8))
    allocation = allocate_activations(tensors, ActivationBudget(average_bits=average, choices=(4, 8)))
    capacity = round(average * sum(t.elements for t in tensors))
    best = min(sum(t.kl[b] for t, b in zip(tensors, bits)) for bits in itertools.product((4, 8), repeat=len(tensors))
               if sum(t.elements * b for t, b in zip(tensors, bits)) <= capacity)
    assert allocation.predicted_kl == pytest.approx(best, rel=1e-12) and allocation.size_bits <= capacity


def test_activation_sensitivity_is_the_kl_onnxruntime_measures_for_that_tensor_alone(digits):
    """Rule: a tensor's activation sensitivity at 4 bits is the mean KL between the float model and the float model
    with only that tensor quantized (Clip to the 4-bit grid, QuantizeLinear, DequantizeLinear, with the probe's own
    parameters), recomputed in onnxruntime (rel. 1e-3: torch and onnxruntime round float32 differently)."""
    from onnx import helper

    from toolchain.quantize.annotate.placement import annotate
    from toolchain.quantize.fold.prepare import prepare_float_model

    model, calib = digits
    inputs = np.load(calib)["inputs"]
    config = QuantConfig(w_bits=4, act_budget=ActivationBudget(average_bits=6.0))
    float_model, _ = prepare_float_model(onnx.load(str(model)), config)
    probe = ActivationProbe(float_model, annotate(float_model, config), inputs, config)
    tensors = {t.tensor: t for t in probe.tensors()}
    tensor = probe.roots[3]
    params = probe.params[tensor, 4]
    scale, zero = float(params.scale), int(params.zero_point)
    quantized = onnx.ModelProto()
    quantized.CopyFrom(float_model)
    graph = quantized.graph
    for node in graph.node:
        node.input[:] = [f"{tensor}_dq" if name == tensor else name for name in node.input]
    graph.initializer.extend([numpy_helper.from_array(np.float32(v), n) for v, n in
                              ((scale * (0 - zero), "lo"), (scale * (15 - zero), "hi"), (scale, "s"))])
    graph.initializer.append(numpy_helper.from_array(np.uint8(zero), "z"))
    graph.node.extend([helper.make_node("Clip", [tensor, "lo", "hi"], ["c"]),
                       helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"]),
                       helper.make_node("DequantizeLinear", ["q", "s", "z"], [f"{tensor}_dq"])])

    expected = _onnxruntime_mean_kl(float_model, quantized, inputs)
    assert expected > 1e-5 and tensors[tensor].kl[4] == pytest.approx(expected, rel=1e-3)


def test_the_mixed_activation_model_carries_each_tensors_bits_and_fits_the_budget(digits, tmp_path):
    """Rule: `quantize --a-bits-budget` writes each tensor's allocated bits into the QDQ model (a 4-bit tensor: a Clip
    to its 16-level grid before its UINT8 QuantizeLinear; an 8-bit one: no Clip); the mean bits over all values fit
    the budget and mix both widths; the report lists every tensor's KL per candidate and its bits."""
    out = tmp_path / "a.onnx"
    report = _quantized_report(digits, out, "--w-bits", "4", "--a-bits-budget", "5.5")
    mixed = report["mixed_precision_activations"]
    bits = {t["tensor"]: t["bits"] for t in mixed["tensors"]}
    assert set(bits.values()) == {4, 8} and mixed["average_bits"] <= 5.5
    assert mixed["average_bits"] == pytest.approx(sum(t["elements"] * t["bits"] for t in mixed["tensors"])
                                                  / mixed["elements_per_input"], abs=1e-4)
    assert all(set(t["kl"]) == {"4", "8"} for t in mixed["tensors"]) and 0 < mixed["measured_kl"] < float("inf")
    assert mixed["predicted_kl"] == pytest.approx(sum(t["kl"][str(t["bits"])] for t in mixed["tensors"]), rel=1e-9)
    assert json.dumps(ActivationAllocationReport.from_dict(mixed).to_dict()) == json.dumps(mixed)  # as the weights'
    qdq = onnx.load(str(out))
    nodes = {n.name: n for n in qdq.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    for tensor, width in bits.items():
        assert report["activations"][tensor]["bits"] == width, tensor
        quantize = nodes[qdq_names.quantize_node(tensor)]
        scale, zero = float(inits[quantize.input[1]]), int(inits[quantize.input[2]])
        assert inits[quantize.input[2]].dtype == np.uint8, tensor
        clip = nodes.get(f"{tensor}_Clip")
        if width == 8:
            assert clip is None, tensor
        else:
            assert float(inits[clip.input[2]]) == pytest.approx(scale * (15 - zero), rel=1e-6), tensor


def test_an_activation_budget_without_candidates_takes_4_and_8_and_survives_the_json_round_trip(digits):
    """Rule: an ActivationBudget that names no candidates gets 4 and 8 bits on onnxruntime x86/ARM; the config with it
    and with the per-tensor bits it writes comes back equal from its JSON form; hand-set tensor bits on a tensor the
    plan does not quantize are refused naming it."""
    from toolchain.quantize.annotate.placement import annotate
    from toolchain.quantize.fold.prepare import prepare_float_model

    config = QuantConfig(w_bits=4, target="ort-arm", act_budget=ActivationBudget(average_bits=5.0),
                         tensor_a_bits=(("no_such_tensor", 8),))
    assert config.act_budget.choices == (4, 8)
    assert QuantConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    float_model, _ = prepare_float_model(onnx.load(str(digits[0])), config)
    with pytest.raises(ConfigError, match="tensor_a_bits names 'no_such_tensor'"):
        annotate(float_model, config)
