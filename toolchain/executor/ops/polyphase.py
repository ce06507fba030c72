"""A strided 2-D convolution with few input channels whose input gradient is a polyphase convolution.

Usage:
    y = stem_conv2d(x, w, b, stride=(2, 2), padding=(3, 3))   # F.conv2d's values; a faster input gradient

Why: the stem of an ImageNet network (3 -> 64 channels, 7x7 stride 2 on ResNet-18; 3 -> 32, 3x3 stride 2 on
MobileNetV2 and EfficientNet-Lite0) needs the gradient with respect to its *input* wherever the images are
optimised: every step of data generation and of reconstruction's distribution correction on the first unit.
oneDNN computes that gradient as a transposed convolution with 3 output channels, which vectorises badly:
on this CPU it takes 3-4x the forward (379 ms against ~90 ms for 64 images at 224x224, 7x7). Split by output
phase, the same sums are one ordinary stride-1 convolution with C_in * s * s output channels (12 here) and a
kernel of ceil(k / s) taps, whose phases are then interleaved: forward and input gradient 448 -> 225 ms for
those 64 images (2.0x). It pays for 7x7 and 5x5 kernels at stride 2, not for MobileNet's 3x3 (worth_phases),
where the executor keeps aten's.

The forward is F.conv2d itself (the same values, bit for bit); the weight and bias gradients are aten's. The
input gradient equals aten's up to float32 rounding (the same products summed in another order).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

MAX_INPUT_CHANNELS = 4  # images (1, 3 or 4 channels): where oneDNN's transposed convolution is slow
MIN_PHASE_TAPS = 3  # taps per phase along some axis, ceil(k / s): below it the phases gain nothing


def worth_phases(w: torch.Tensor, strides: tuple[int, ...]) -> bool:
    """Whether the polyphase input gradient pays for a weight of this shape at these strides: few input channels
    and at least MIN_PHASE_TAPS taps per phase. Measured, 32 images at 224x224, forward and input gradient:
    7x7 stride 2 (4 taps) 1.99x, 5x5 stride 2 (3 taps) 1.56x, 3x3 stride 2 (2 taps) 1.04x, 4x4 stride 4 (1 tap)
    1.13x. Below the bar it would only add allocation sizes of its own, which with executor.memory's reuse of
    freed blocks raised MobileNetV2's peak (unit 0: 2.58 -> 2.76 GB; equal with --reuse-memory off)."""
    taps = max(math.ceil(k / s) for k, s in zip(w.shape[2:], strides, strict=True))
    return w.shape[1] <= MAX_INPUT_CHANNELS and taps >= MIN_PHASE_TAPS


def _axis_plan(kernel: int, stride: int, pad_begin: int, size: int,
               out_size: int) -> tuple[list[list[tuple[int, int]]], int, int, int]:
    """Per phase r (input position h = s*m + r), the (tap t, kernel index k) pairs of the stride-1 correlation
    z_r[m] = sum_t dy_padded[m + t] * w[k], then (taps, pad before, pad after) of dy along this axis.

    Forward: y[i] = sum_k x[s*i - p + k] w[k]. So x[h] receives dy[i] w[k] where s*i = h + p - k: with
    h = s*m + r, i = m + o for the offset o = (r + p - k) / s when that is an integer."""
    offsets = [[((r + pad_begin - k) // stride, k) for k in range(kernel) if (r + pad_begin - k) % stride == 0]
               for r in range(stride)]
    every = [o for phase in offsets for o, _ in phase]
    low, high = min(every), max(every)
    taps = high - low + 1
    phases = math.ceil(size / stride)  # m = 0 .. phases - 1
    before = -low
    after = phases + taps - 1 - out_size - before
    return [[(o - low, k) for o, k in phase] for phase in offsets], taps, before, after


def polyphase_input_gradient(grad: torch.Tensor, w: torch.Tensor, input_shape: torch.Size,
                             stride: tuple[int, int], padding: tuple[int, int],
                             memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """d loss / d x of y = conv2d(x, w, stride, padding) from grad = d loss / d y: one stride-1 convolution with
    C_in * s_h * s_w output channels (one per input channel and phase), then its phases interleaved into an
    input-sized tensor in `memory_format` (the input's: an optimiser's update then runs over matching strides)."""
    c_out, c_in, k_h, k_w = w.shape
    (s_h, s_w), (p_h, p_w) = stride, padding
    h, w_size = input_shape[2], input_shape[3]
    rows, t_h, before_h, after_h = _axis_plan(k_h, s_h, p_h, h, grad.shape[2])
    cols, t_w, before_w, after_w = _axis_plan(k_w, s_w, p_w, w_size, grad.shape[3])
    # Kernel of the phase convolution, output channel (c, r_h, r_w), input channel o: one gather from the weight
    # with a zero appended (index k_h * k_w), so that a compiled backward traces one op, not one per tap.
    taps = [[k_h * k_w] * (t_h * t_w) for _ in range(s_h * s_w)]
    for r_h, phase_h in enumerate(rows):
        for r_w, phase_w in enumerate(cols):
            for tap_h, k_row in phase_h:
                for tap_w, k_col in phase_w:
                    taps[r_h * s_w + r_w][tap_h * t_w + tap_w] = k_row * k_w + k_col
    flat = torch.cat([w.detach().reshape(c_out, c_in, k_h * k_w), w.new_zeros(c_out, c_in, 1)], dim=2)
    gathered = flat[:, :, torch.tensor(taps, device=w.device)]  # c_out, c_in, phases, taps
    kernel = gathered.permute(1, 2, 0, 3).reshape(c_in * s_h * s_w, c_out, t_h, t_w)
    if grad.is_contiguous(memory_format=torch.channels_last):
        kernel = kernel.contiguous(memory_format=torch.channels_last)
    phases = _correlate(grad, kernel, (before_h, after_h), (before_w, after_w))
    n, _, m_h, m_w = phases.shape
    by_phase = phases.view(n, c_in, s_h, s_w, m_h, m_w)
    if memory_format == torch.channels_last:  # memory order n, m_h, r_h, m_w, r_w, c
        full = grad.new_empty(n, m_h, s_h, m_w, s_w, c_in)
        full.copy_(by_phase.permute(0, 4, 2, 5, 3, 1))
        full = full.view(n, m_h * s_h, m_w * s_w, c_in).permute(0, 3, 1, 2)
    else:
        full = grad.new_empty(n, c_in, m_h, s_h, m_w, s_w)
        full.copy_(by_phase.permute(0, 1, 4, 2, 5, 3))
        full = full.view(n, c_in, m_h * s_h, m_w * s_w)
    if full.shape[2] != h or full.shape[3] != w_size:  # an input size that the stride does not divide
        full = full[:, :, :h, :w_size].contiguous(memory_format=memory_format)
    return full


def _correlate(grad: torch.Tensor, kernel: torch.Tensor, pads_h: tuple[int, int],
               pads_w: tuple[int, int]) -> torch.Tensor:
    """conv2d of grad padded by (before, after) on each axis: with the convolution's own symmetric padding and a
    slice of its output where the pads are not negative (no padded copy of grad, the largest tensor here)."""
    if min(pads_h + pads_w) < 0:
        return F.conv2d(F.pad(grad, (*pads_w, *pads_h)), kernel)
    sym_h, sym_w = max(pads_h), max(pads_w)
    out = F.conv2d(grad, kernel, padding=(sym_h, sym_w))
    start_h, start_w = sym_h - pads_h[0], sym_w - pads_w[0]
    length_h = grad.shape[2] + sum(pads_h) - kernel.shape[2] + 1
    length_w = grad.shape[3] + sum(pads_w) - kernel.shape[3] + 1
    return out[:, :, start_h:start_h + length_h, start_w:start_w + length_w]


class _StemConv2d(torch.autograd.Function):
    """F.conv2d with the polyphase input gradient; weight and bias gradients from aten."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, b is not None
        return F.conv2d(x, w, b, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            grad_x = polyphase_input_gradient(grad, w, x.shape, ctx.stride, ctx.padding, layout)
        want_w, want_b = ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        if want_w or want_b:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, w, [w.shape[0]] if ctx.has_bias else None, list(ctx.stride), list(ctx.padding), [1, 1],
                False, [0, 0], 1, [False, want_w, want_b])
        return grad_x, grad_w, grad_b, None, None


def stem_conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
    """F.conv2d(x, w, b, stride, padding) whose backward computes the input gradient by phases (see above)."""
    return _StemConv2d.apply(x, w, b, tuple(stride), tuple(padding))
