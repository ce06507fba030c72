"""The polyphase input gradient of strided few-channel convolutions (executor/ops/polyphase.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from toolchain.executor import OnnxModule
from toolchain.executor.ops.polyphase import stem_conv2d

# kernel, stride, padding, input size, input channels: ResNet's 7x7 stem, MobileNet's 3x3 one, a size the stride
# does not divide, unequal strides, a kernel smaller than the stride (phases that receive nothing), stride 4.
CASES = [((7, 7), (2, 2), (3, 3), (64, 64), 3), ((3, 3), (2, 2), (1, 1), (32, 32), 3),
         ((3, 3), (2, 2), (0, 0), (33, 33), 3), ((3, 3), (2, 2), (1, 1), (33, 31), 1),
         ((5, 5), (3, 3), (2, 2), (40, 41), 4), ((3, 5), (2, 1), (1, 2), (30, 30), 3),
         ((2, 2), (3, 3), (1, 0), (17, 19), 2), ((4, 4), (4, 4), (0, 0), (32, 32), 3)]


@pytest.mark.parametrize("kernel, stride, padding, size, channels", CASES)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gradients_match_aten(kernel, stride, padding, size, channels, layout):
    """Rule: the forward is F.conv2d's bit for bit, the weight and bias gradients are aten's bit for bit, and the
    input gradient equals aten's within 1e-12 relative (float64: the same products summed in another order),
    in the input's memory layout."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, *size, dtype=torch.float64, generator=gen).contiguous(memory_format=layout)
    w = torch.randn(5, channels, *kernel, dtype=torch.float64, generator=gen)
    b = torch.randn(5, dtype=torch.float64, generator=gen)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    want_y = F.conv2d(*leaves, stride, padding)
    grad = torch.randn(want_y.shape, dtype=torch.float64, generator=gen)
    want = torch.autograd.grad(want_y, leaves, grad)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    got_y = stem_conv2d(*leaves, stride, padding)
    got = torch.autograd.grad(got_y, leaves, grad)
    assert torch.equal(got_y, want_y)
    assert (got[0] - want[0]).abs().max() <= 1e-12 * want[0].abs().max()
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    assert got[0].is_contiguous(memory_format=layout)


def test_input_gradient_alone_skips_the_weight_gradient():
    """Rule: when only the input needs a gradient (data generation), the weight and bias get none."""
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    w, b = torch.randn(4, 3, 3, 3), torch.randn(4)
    stem_conv2d(x, w, b, (2, 2), (1, 1)).sum().backward()
    assert x.grad is not None and w.grad is None and b.grad is None


def _stem_graph(pads: list[int], weight: torch.Tensor) -> OnnxModule:
    w = numpy_helper.from_array(weight.numpy(), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=pads,
                            kernel_shape=list(weight.shape[2:]))
    graph = helper.make_graph([node], "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return OnnxModule(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("pads", [[3, 3, 3, 3], [2, 2, 3, 3]])
def test_executor_runs_a_stem_that_needs_its_input_gradient_by_phases(pads):
    """Rule: the executor's Conv takes the polyphase path exactly when the input needs a gradient (symmetric and
    asymmetric pads), and its input gradient matches torch's within 1e-5 relative (float32)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 3, 7, 7, generator=gen)
    module = _stem_graph(pads, w)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        plain = module(x)
    leaf = x.clone().requires_grad_(True)
    y = module(leaf)
    assert type(y.grad_fn).__name__ == "_StemConv2dBackward"
    assert torch.equal(y.detach(), plain)
    y.square().sum().backward()
    ref = x.clone().requires_grad_(True)
    pads_torch = (pads[1], pads[3], pads[0], pads[2])
    F.conv2d(F.pad(ref, pads_torch), w, None, 2).square().sum().backward()
    assert (leaf.grad - ref.grad).abs().max() <= 1e-5 * ref.grad.abs().max()


@pytest.mark.parametrize("kernel, expected", [(7, "_StemConv2dBackward"), (5, "_StemConv2dBackward"),
                                              (3, "ConvolutionBackward0")])
def test_phases_only_where_they_pay(kernel, expected):
    """Rule: the executor takes the polyphase path for kernels with at least 3 taps per phase (7x7 and 5x5 at stride
    2, measured 2.0x and 1.6x) and keeps aten's for 3x3 stems (1.04x: nothing to gain, only new allocation sizes)."""
    module = _stem_graph([kernel // 2] * 4, torch.randn(8, 3, kernel, kernel, generator=torch.Generator().manual_seed(0)))
    y = module(torch.randn(1, 3, 32, 32).requires_grad_(True))
    assert type(y.grad_fn).__name__ == expected
