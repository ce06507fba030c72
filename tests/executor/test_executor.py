"""Torch executor: parity with onnxruntime on every zoo model and per op, gradients, frozen/trainable weights, BN hooks."""

from __future__ import annotations

import weakref

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from toolchain.errors import GraphError
from toolchain.executor import OnnxModule, supported_ops
from toolchain.export.exporter import export_to_onnx
from toolchain_models.digits import digits_resnet
from toolchain_models.imagenet import mobilenetv2, resnet18
from toolchain_models.resnet_cifar import resnet20, resnet56

TOLERANCE = 1e-5  # max|diff| / max|reference|: float32 kernels differ only in summation order
INT64_MAX = np.iinfo(np.int64).max

# name -> (factory, input shape used for export and for the parity check)
ZOO = {
    "resnet20": (resnet20, (2, 3, 32, 32)),
    "resnet56": (resnet56, (2, 3, 32, 32)),
    "resnet18": (resnet18, (1, 3, 224, 224)),
    "mobilenetv2": (mobilenetv2, (1, 3, 224, 224)),
    "digits_resnet": (digits_resnet, (2, 1, 8, 8)),
}


def _randomise_batchnorm(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so a BN that were skipped or misread would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
            n = bn.num_features
            bn.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            bn.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            bn.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return module.eval()


def _zoo_pair(name: str, spatial: tuple[int, ...] | None = None) -> tuple[nn.Module, onnx.ModelProto, tuple[int, ...]]:
    """(native module with random weights and BN statistics, its ONNX export with BN kept, input shape)."""
    factory, shape = ZOO[name]
    if spatial is not None:
        shape = (*shape[:2], *spatial)
    torch.manual_seed(0)
    native = _randomise_batchnorm(factory())
    return native, export_to_onnx(native, torch.zeros(1, *shape[1:])), shape


@pytest.fixture(scope="module")
def resnet20_pair() -> tuple[nn.Module, onnx.ModelProto]:
    native, model, _ = _zoo_pair("resnet20")
    return native, model


def _relative_diff(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def _run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _run_executor(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    module = OnnxModule(model)
    inputs = [torch.from_numpy(feeds[name]) for name in module.input_names]
    with torch.no_grad():
        out = module(*inputs)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


# ------------------------------------------------------------------------------------------ zoo parity


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_matches_onnxruntime(name):
    """Every zoo model, exported with BN kept: executor output matches onnxruntime within max|diff|/max|ref| <= 1e-5."""
    _, model, shape = _zoo_pair(name)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    got = _run_executor(model, {"input": x.numpy()})[0]
    want = _run_ort(model, {"input": x.numpy()})[0]
    assert got.shape == want.shape
    assert _relative_diff(got, want) <= TOLERANCE


# ------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name, spatial", [("resnet20", None), ("mobilenetv2", (64, 64)), ("resnet18", (64, 64)),
                                           ("digits_resnet", None)])
def test_input_gradient_matches_native_module(name, spatial):
    """The gradient w.r.t. the input is non-zero and matches the native module's (max|diff|/max|ref| <= 1e-4)."""
    native, model, shape = _zoo_pair(name, spatial)
    executor = OnnxModule(model)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(shape[0], native(x).shape[1], generator=torch.Generator().manual_seed(3))
    grads = []
    for engine in (native.requires_grad_(False), executor):
        x_leaf = x.clone().requires_grad_()
        (engine(x_leaf) * weights).sum().backward()
        grads.append(x_leaf.grad.numpy())
    assert np.abs(grads[1]).max() > 0
    assert _relative_diff(grads[1], grads[0]) <= 1e-4


# ------------------------------------------------------------------------------------ frozen/trainable


def test_weights_are_frozen_buffers_by_default(resnet20_pair):
    """Default: every initializer is a buffer with requires_grad False, and backward leaves them without grad."""
    native, model = resnet20_pair
    executor = OnnxModule(model)
    assert list(executor.parameters()) == []
    assert all(not b.requires_grad for b in executor.buffers())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    executor(x).sum().backward()
    assert executor.initializer("conv1.weight").grad is None
    assert torch.equal(executor.initializer("conv1.weight"), native.conv1.weight)


def test_trainable_makes_float_weights_parameters_but_not_statistics(resnet20_pair):
    """trainable=True: conv/BN-affine/linear weights are nn.Parameters that get gradients; BN statistics and shape constants stay buffers."""
    _, model = resnet20_pair
    executor = OnnxModule(model, trainable=True)
    weight = executor.initializer("conv1.weight")
    assert isinstance(weight, nn.Parameter) and weight.requires_grad
    assert isinstance(executor.initializer("bn1.weight"), nn.Parameter)
    assert executor.initializer_names["layer1.0.conv1.weight"] == "layer1_0_conv1_weight"
    assert not isinstance(executor.initializer("bn1.running_mean"), nn.Parameter)
    assert not any(p.dtype == torch.int64 for p in executor.parameters())
    executor(torch.randn(2, 3, 32, 32)).sum().backward()
    assert weight.grad is not None and weight.grad.abs().max() > 0
    assert set(executor.initializer_arrays()) == {init.name for init in model.graph.initializer}


# ---------------------------------------------------------------------------------------------- BN hooks


def test_bn_hook_sees_every_bn_input_with_its_channel_count(resnet20_pair):
    """The BN input hook is called once per BatchNormalization node, in graph order, with a tensor of the node's channel count."""
    native, model = resnet20_pair
    executor = OnnxModule(model)
    graph_bns = [node.name for node in model.graph.node if node.op_type == "BatchNormalization"]
    native_bns = [m for m in native.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.name for bn in executor.bn_nodes] == graph_bns
    assert [bn.channels for bn in executor.bn_nodes] == [m.num_features for m in native_bns]
    seen: list[tuple[str, int]] = []
    with executor.bn_input_hook(lambda name, x: seen.append((name, x.shape[1]))):
        executor(torch.randn(2, 3, 32, 32))
    assert seen == [(bn.name, bn.channels) for bn in executor.bn_nodes]
    executor(torch.randn(2, 3, 32, 32))
    assert len(seen) == len(graph_bns), "the hook must be gone after the with block"


def test_bn_statistics_are_exposed_and_hooks_carry_gradients(resnet20_pair):
    """bn_statistics() gives each node's running mean/var; a loss on hooked inputs back-propagates to the network input."""
    native, model = resnet20_pair
    executor = OnnxModule(model)
    stats = executor.bn_statistics()
    native_bns = [m for m in native.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn, module in zip(executor.bn_nodes, native_bns):
        mean, var = stats[bn.name]
        assert torch.equal(mean, module.running_mean) and torch.equal(var, module.running_var)
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    losses = []

    def match_statistics(name: str, inp: torch.Tensor) -> None:
        mean, var = stats[name]
        losses.append((inp.mean((0, 2, 3)) - mean).square().sum() + (inp.var((0, 2, 3)) - var).square().sum())

    handle = executor.register_bn_input_hook(match_statistics)
    executor(x)
    handle.remove()
    torch.stack(losses).sum().backward()
    assert len(losses) == len(executor.bn_nodes) and x.grad.abs().max() > 0


def test_intermediate_values_are_freed_after_their_last_use():
    """Reference counting: by the last BN node, the first BN's input (used by nothing else) has been released."""
    _, model, _ = _zoo_pair("digits_resnet")
    executor = OnnxModule(model)
    first, last = executor.bn_nodes[0].name, executor.bn_nodes[-1].name
    refs: dict[str, weakref.ref] = {}
    alive_at_last: list[bool] = []

    def watch(name: str, x: torch.Tensor) -> None:
        refs[name] = weakref.ref(x)
        if name == last:
            alive_at_last.append(refs[first]() is not None)

    with torch.no_grad(), executor.bn_input_hook(watch):  # no autograd graph to keep values alive
        executor(torch.randn(2, 1, 8, 8))
    assert alive_at_last == [False]


# ---------------------------------------------------------------------------------------------- errors


def _graph(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], outputs: list[str],
           inits: dict[str, np.ndarray] | None = None, opset: int = 17) -> onnx.ModelProto:
    value_infos = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                   for n, a in inputs.items()]
    output_infos = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in outputs]
    initializers = [numpy_helper.from_array(np.asarray(a), n) for n, a in (inits or {}).items()]
    graph = helper.make_graph(nodes, "g", value_infos, output_infos, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_unsupported_op_names_node_and_lists_supported_ops():
    """An op without a kernel raises GraphError at construction, naming the op type and node and listing the supported ops."""
    x = np.zeros((1, 4), np.float32)
    model = _graph([helper.make_node("Relu", ["x"], ["r"], name="ok"),
                    helper.make_node("Hardmax", ["r"], ["y"], name="the_hardmax")], {"x": x}, ["y"])
    with pytest.raises(GraphError, match="Hardmax node 'the_hardmax'") as info:
        OnnxModule(model)
    assert ", ".join(supported_ops()) in str(info.value)
    assert supported_ops() == sorted(supported_ops()) and "\n" not in str(info.value)


def test_node_outside_the_onnx_domain_is_rejected():
    """A node from another domain (com.microsoft) raises GraphError naming the node and the domain."""
    x = np.zeros((1, 4), np.float32)
    node = helper.make_node("Gelu", ["x"], ["y"], name="ms_gelu", domain="com.microsoft")
    model = _graph([node], {"x": x}, ["y"])
    with pytest.raises(GraphError, match=r"'ms_gelu'.*com.microsoft"):
        OnnxModule(model)


def test_runtime_failure_names_the_node():
    """A kernel that fails at run time (wrong input shape) keeps torch's error and adds a note naming the node."""
    _, model, _ = _zoo_pair("digits_resnet")
    with pytest.raises(RuntimeError) as info:
        OnnxModule(model)(torch.zeros(1, 3, 8, 8))
    assert any("Conv node '/conv1/Conv'" in note for note in info.value.__notes__)


# ------------------------------------------------------------------------------------- per-op parity

RNG = np.random.default_rng(0)


def _rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


X4 = _rand(2, 3, 7, 8)
# id -> (nodes, runtime inputs, initializers, outputs, opset)
OP_CASES = {
    "pad_asymmetric_value": ([helper.make_node("Pad", ["x", "pads", "v"], ["y"])], {"x": X4},
                             {"pads": _i64(0, 1, 2, 0, 0, 2, 1, 3), "v": np.array(0.5, np.float32)}, ["y"], 17),
    "pad_negative_crops": ([helper.make_node("Pad", ["x", "pads"], ["y"])], {"x": X4},
                           {"pads": _i64(0, 0, -1, 2, 0, 0, 1, -3)}, ["y"], 17),
    "pad_axes_input": ([helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"])], {"x": X4},
                       {"pads": _i64(1, 2, 3, 0), "axes": _i64(-1, 1)}, ["y"], 18),
    "slice_steps_and_int64_max": ([helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])], {"x": X4},
                                  {"s": _i64(1, -7), "e": _i64(INT64_MAX, 8), "a": _i64(2, 3), "st": _i64(2, 3)},
                                  ["y"], 17),
    "slice_negative_axes_no_steps": ([helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])], {"x": X4},
                                     {"s": _i64(1, 0), "e": _i64(-1, 2), "a": _i64(-1, 1)}, ["y"], 17),
    "gemm_transA_alpha_beta": ([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1, alpha=0.5, beta=2.0)],
                               {"a": _rand(3, 4)}, {"b": _rand(3, 5), "c": _rand(5)}, ["y"], 17),
    "gemm_transB_matrix_bias": ([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1)],
                                {"a": _rand(4, 3)}, {"b": _rand(5, 3), "c": _rand(4, 5)}, ["y"], 17),
    "gemm_no_bias_alpha": ([helper.make_node("Gemm", ["a", "b"], ["y"], alpha=3.0)],
                           {"a": _rand(4, 3)}, {"b": _rand(3, 5)}, ["y"], 17),
    "reshape_zero_and_minus_one": ([helper.make_node("Reshape", ["x", "s"], ["y"])], {"x": X4},
                                   {"s": _i64(0, -1, 8)}, ["y"], 17),
    "reshape_allowzero": ([helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=1)], {"x": X4},
                          {"s": _i64(6, 56)}, ["y"], 17),
    "clip_both_bounds": ([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], {"x": X4},
                         {"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}, ["y"], 17),
    "clip_max_only": ([helper.make_node("Clip", ["x", "", "hi"], ["y"])], {"x": X4},
                      {"hi": np.array(0.2, np.float32)}, ["y"], 17),
    "clip_min_only": ([helper.make_node("Clip", ["x", "lo"], ["y"])], {"x": X4},
                      {"lo": np.array(0.1, np.float32)}, ["y"], 17),
    "clip_no_bounds": ([helper.make_node("Clip", ["x"], ["y"])], {"x": X4}, {}, ["y"], 17),
    "clip_runtime_bounds": ([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
                            {"x": X4, "lo": np.array(-0.3, np.float32), "hi": np.array(0.4, np.float32)}, {}, ["y"], 17),
    "reduce_mean_axes_attribute": ([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, -1], keepdims=0)],
                                   {"x": X4}, {}, ["y"], 17),
    "reduce_mean_axes_input": ([helper.make_node("ReduceMean", ["x", "a"], ["y"])], {"x": X4},
                               {"a": _i64(2, 3)}, ["y"], 18),
    "reduce_mean_all_axes": ([helper.make_node("ReduceMean", ["x"], ["y"])], {"x": X4}, {}, ["y"], 17),
    "concat_three": ([helper.make_node("Concat", ["x", "x2", "w"], ["y"], axis=1)],
                     {"x": X4, "x2": _rand(2, 1, 7, 8)}, {"w": _rand(2, 2, 7, 8)}, ["y"], 17),
    "maxpool_asymmetric_pads": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                                  pads=[1, 0, 2, 1])], {"x": X4}, {}, ["y"], 17),
    "maxpool_symmetric_dilated": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 3], pads=[1, 1, 1, 1],
                                                    dilations=[2, 1])], {"x": X4}, {}, ["y"], 17),
    "maxpool_ceil_mode": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                                            ceil_mode=1)], {"x": X4}, {}, ["y"], 17),
    "avgpool_pads_exclude_pad": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                                   pads=[1, 1, 1, 1])], {"x": X4}, {}, ["y"], 17),
    "avgpool_asymmetric_exclude_pad": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 2],
                                                         pads=[0, 1, 2, 0])], {"x": X4}, {}, ["y"], 17),
    "avgpool_asymmetric_include_pad": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 2],
                                                         pads=[0, 1, 2, 0], count_include_pad=1)],
                                       {"x": X4}, {}, ["y"], 17),
    "avgpool_same_upper": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                             auto_pad="SAME_UPPER")], {"x": X4}, {}, ["y"], 17),
    "softmax_last_axis": ([helper.make_node("Softmax", ["x"], ["y"])], {"x": X4}, {}, ["y"], 17),
    "softmax_axis_1": ([helper.make_node("Softmax", ["x"], ["y"], axis=1)], {"x": X4}, {}, ["y"], 17),
    "softmax_opset11_flattens": ([helper.make_node("Softmax", ["x"], ["y"], axis=2)], {"x": X4}, {}, ["y"], 11),
    "conv_asymmetric_groups_dilations": ([helper.make_node("Conv", ["x", "w", "b"], ["y"], group=3, strides=[2, 1],
                                                           dilations=[1, 2], pads=[0, 1, 2, 2])],
                                         {"x": X4}, {"w": _rand(6, 1, 3, 3), "b": _rand(6)}, ["y"], 17),
    "conv_same_upper_strided": ([helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], auto_pad="SAME_UPPER")],
                                {"x": X4}, {"w": _rand(4, 3, 3, 2)}, ["y"], 17),
    "conv_1d": ([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3], pads=[1, 0])],
                {"x": _rand(2, 3, 9)}, {"w": _rand(5, 3, 3)}, ["y"], 17),
    "batchnorm_opset15": ([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)],
                          {"x": X4}, {"s": _rand(3), "b": _rand(3), "m": _rand(3), "v": np.abs(_rand(3)) + 0.1},
                          ["y"], 15),
    "elementwise_matmul_sigmoid": ([helper.make_node("MatMul", ["a", "b"], ["m"]),
                                    helper.make_node("Sigmoid", ["m"], ["s"]),
                                    helper.make_node("Mul", ["s", "c"], ["p"]),
                                    helper.make_node("Div", ["p", "d"], ["q"]),
                                    helper.make_node("Sub", ["q", "c"], ["y"])],
                                   {"a": _rand(2, 3, 4)}, {"b": _rand(4, 5), "c": _rand(5), "d": _rand(3, 1) + 3},
                                   ["y"], 17),
    "layout_ops": ([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                    helper.make_node("Unsqueeze", ["t", "ua"], ["u"]),
                    helper.make_node("Squeeze", ["u", "ua"], ["s"]),
                    helper.make_node("Flatten", ["s"], ["f"], axis=2),
                    helper.make_node("Dropout", ["f"], ["d"]),
                    helper.make_node("Identity", ["d"], ["y"])],
                   {"x": X4}, {"ua": _i64(-1, 1)}, ["y"], 17),
    "dynamic_shape_chain": ([helper.make_node("Shape", ["x"], ["shape"]),
                             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
                             helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
                             helper.make_node("Constant", [], ["minus_one"], value=numpy_helper.from_array(_i64(-1))),
                             helper.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
                             helper.make_node("Cast", ["target"], ["target_f"], to=onnx.TensorProto.FLOAT),
                             helper.make_node("Cast", ["target_f"], ["target_i"], to=onnx.TensorProto.INT64),
                             helper.make_node("Reshape", ["x", "target_i"], ["y"])],
                            {"x": X4}, {"zero": np.array(0, np.int64), "axes": _i64(0)}, ["y"], 17),
    "gather_vector_indices": ([helper.make_node("Gather", ["x", "idx"], ["y"], axis=1)],
                              {"x": X4}, {"idx": _i64(2, -1, 0, 0)}, ["y"], 17),
    "constant_folded_shape": ([helper.make_node("Constant", [], ["c"], value_ints=[3, 0, -1]),
                               helper.make_node("Mul", ["c", "two"], ["c2"]),
                               helper.make_node("Div", ["c2", "two"], ["shape"]),
                               helper.make_node("Reshape", ["x", "shape"], ["y"])],
                              {"x": _rand(3, 7, 4)}, {"two": _i64(2)}, ["y"], 17),
    "global_max_pool_and_squeeze_all": ([helper.make_node("GlobalMaxPool", ["x"], ["g"]),
                                         helper.make_node("Squeeze", ["g"], ["y"])], {"x": X4}, {}, ["y"], 17),
    "hardswish_hardsigmoid_se_gate": ([helper.make_node("HardSwish", ["x"], ["h"]),
                                       helper.make_node("HardSigmoid", ["h"], ["g"], alpha=1 / 6, beta=0.5),
                                       helper.make_node("HardSigmoid", ["x"], ["g2"]),
                                       helper.make_node("Mul", ["g", "g2"], ["y"])], {"x": X4 * 4}, {}, ["y"], 17),
    "leaky_prelu_tanh_elu": ([helper.make_node("LeakyRelu", ["x"], ["l"], alpha=0.1),
                              helper.make_node("PRelu", ["l", "slope"], ["p"]),
                              helper.make_node("Tanh", ["p"], ["t"]),
                              helper.make_node("Elu", ["t"], ["y"], alpha=0.5)],
                             {"x": X4}, {"slope": _rand(3, 1, 1)}, ["y"], 17),
    "erf_gelu_written_out": ([helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                              helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
                              helper.make_node("Mul", ["m", "half"], ["y"])], {"x": X4},
                             {"sqrt2": np.array(2 ** 0.5, np.float32), "one": np.array(1, np.float32),
                              "half": np.array(0.5, np.float32)}, ["y"], 17),
    "gelu_opset20_both_approximations": ([helper.make_node("Gelu", ["x"], ["g"]),
                                          helper.make_node("Gelu", ["g"], ["y"], approximate="tanh")], {"x": X4}, {}, ["y"], 20),
    "layernorm_last_axis": ([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], epsilon=1e-6)],
                            {"x": X4}, {"s": _rand(8), "b": _rand(8)}, ["y"], 17),
    "layernorm_axis2_no_bias": ([helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=2)],
                                {"x": X4}, {"s": _rand(7, 8)}, ["y"], 17),
    "layernorm_written_out": ([helper.make_node("ReduceMean", ["x", "ax"], ["mu"]), helper.make_node("Sub", ["x", "mu"], ["c"]),
                               helper.make_node("Pow", ["c", "two"], ["sq"]), helper.make_node("ReduceMean", ["sq", "ax"], ["var"]),
                               helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
                               helper.make_node("Div", ["c", "sd"], ["y"])], {"x": X4},
                              {"ax": _i64(-1), "two": np.array(2, np.float32), "eps": np.array(1e-6, np.float32)}, ["y"], 18),
    "softmax_logsoftmax_matmul_attention": ([helper.make_node("Transpose", ["x"], ["kt"], perm=[0, 1, 3, 2]),
                                             helper.make_node("MatMul", ["x", "kt"], ["s"]),
                                             helper.make_node("Softmax", ["s"], ["p"]),
                                             helper.make_node("MatMul", ["p", "x"], ["o"]),
                                             helper.make_node("LogSoftmax", ["o"], ["y"], axis=1)], {"x": X4}, {}, ["y"], 17),
    "split_sizes_input": ([helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1)], {"x": X4},
                          {"sizes": _i64(1, 2)}, ["a", "b"], 17),
    "split_equal_parts": ([helper.make_node("Split", ["x"], ["a", "b"], axis=3)], {"x": X4}, {}, ["a", "b"], 13),
    "split_num_outputs_uneven": ([helper.make_node("Split", ["x"], ["a", "b", "c"], axis=2, num_outputs=3)],
                                 {"x": X4}, {}, ["a", "b", "c"], 18),
    "expand_tile": ([helper.make_node("Expand", ["c", "shape"], ["e"]), helper.make_node("Add", ["x", "e"], ["s"]),
                     helper.make_node("Tile", ["s", "reps"], ["y"])], {"x": X4},
                    {"c": _rand(1, 3, 1, 8), "shape": _i64(2, 1, 7, 1), "reps": _i64(1, 2, 1, 2)}, ["y"], 17),
    "int64_equal_where_mod_range": ([helper.make_node("Shape", ["x"], ["sh"]), helper.make_node("Equal", ["sh", "seven"], ["eq"]),
                                     helper.make_node("Where", ["eq", "minus", "sh"], ["w"]),
                                     helper.make_node("Mod", ["w", "three"], ["m"]),
                                     helper.make_node("Mod", ["w", "three"], ["mf"], fmod=1),
                                     helper.make_node("Add", ["m", "mf"], ["a"]),
                                     helper.make_node("ReduceSum", ["a"], ["total"], keepdims=0),
                                     helper.make_node("Range", ["zero", "total", "one"], ["r"]),
                                     helper.make_node("Cast", ["r"], ["y"], to=onnx.TensorProto.FLOAT)],
                                    {"x": X4}, {"seven": _i64(7), "minus": _i64(-5), "three": _i64(3),
                                                "zero": np.array(0, np.int64), "one": np.array(1, np.int64)}, ["y"], 17),
    "constant_of_shape_max_min": ([helper.make_node("ConstantOfShape", ["shape"], ["c"],
                                                    value=numpy_helper.from_array(np.array([0.25], np.float32))),
                                   helper.make_node("Max", ["x", "c"], ["mx"]), helper.make_node("Min", ["mx", "x", "x2"], ["y"])],
                                  {"x": X4, "x2": _rand(2, 3, 7, 8)}, {"shape": _i64(2, 3, 7, 8)}, ["y"], 17),
    "reduce_sum_max_min": ([helper.make_node("ReduceSum", ["x", "ax"], ["s"]), helper.make_node("ReduceMax", ["s"], ["m"], axes=[1]),
                            helper.make_node("ReduceMin", ["x"], ["n"], axes=[2, 3], keepdims=1),
                            helper.make_node("Add", ["m", "n"], ["y"])], {"x": X4}, {"ax": _i64(3)}, ["y"], 17),
    "resize_nearest_scales": ([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                                                coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                              {"x": X4}, {"scales": np.array([1, 1, 2, 2], np.float32)}, ["y"], 17),
    "resize_nearest_half_pixel_sizes": ([helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest",
                                                          nearest_mode="round_prefer_ceil")],
                                        {"x": X4}, {"sizes": _i64(2, 3, 11, 5)}, ["y"], 17),
    "resize_linear_half_pixel": ([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")],
                                 {"x": X4}, {"scales": np.array([1, 1, 2, 1.5], np.float32)}, ["y"], 17),
    "resize_linear_align_corners": ([helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                                                      coordinate_transformation_mode="align_corners")],
                                    {"x": X4}, {"sizes": _i64(2, 3, 13, 9)}, ["y"], 17),
    "resize_cubic": ([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic")],
                     {"x": X4}, {"scales": np.array([1, 1, 2, 2], np.float32)}, ["y"], 17),
    "two_outputs": ([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("GlobalAveragePool", ["x"], ["z"])],
                    {"x": X4}, {}, ["y", "z"], 17),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_matches_onnxruntime(case):
    """Each op and attribute variant (Pad, Slice, Gemm, Reshape, Clip, ReduceMean, Concat, pools, Softmax, ...) matches onnxruntime within 1e-5."""
    nodes, inputs, inits, outputs, opset = OP_CASES[case]
    model = _graph(nodes, inputs, outputs, inits, opset)
    got = _run_executor(model, inputs)
    want = _run_ort(model, inputs)
    assert len(got) == len(want) == len(outputs)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert _relative_diff(g, w) <= TOLERANCE


def test_nodes_out_of_file_order_are_sorted_topologically():
    """Nodes stored in shuffled order run in dependency order and give the same output."""
    _, model, shape = _zoo_pair("digits_resnet")
    x = torch.randn(shape)
    want = OnnxModule(model)(x)
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    assert torch.equal(OnnxModule(model)(x), want)


def test_constant_subgraphs_are_folded_at_construction():
    """Nodes computed only from constants run once at construction; forward runs only the nodes that need the input."""
    nodes, inputs, inits, outputs, opset = OP_CASES["constant_folded_shape"]
    module = OnnxModule(_graph(nodes, inputs, outputs, inits, opset))
    assert module.runtime_nodes == [("Reshape", "")]
