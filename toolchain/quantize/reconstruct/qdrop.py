"""QDrop's random masks: which elements of an activation go on quantized, and which in float.

Usage:
    keep = keep_mask((16, 32, 112, 112), prob=0.5, generator=g)   # bool; True = the quantized value
    hook = qdrop_hook(0.5, g, global_rows=lambda: (rows, batch))   # for OnnxModule.output_hooks on QuantizeLinear
    with module.output_hooks({name: hook for name in quantizers}):
        out = module(x)
    mixed = select(keep, quantized_inputs, float_inputs)          # torch.where(keep, a, b), exactly, 3x faster

QDrop (Wei et al., 2022) lets a random half of each activation through unquantized at every step. At
224x224 the masks are as large as the activations (6.4 M elements for 16 images of 32 x 112 x 112), and
one float draw per element from the generator cost as much as the unit's own convolutions. At the
usual probability of 0.5 each element needs one random bit, so the mask is drawn as random bytes and
unpacked, eight elements per draw (bench/torch_speed.py: ~5x faster than `torch.rand(...) < 0.5` on
the 2-core CPU). Other probabilities compare a uniform float per element, as QDrop writes it.

The selection itself is `select`, not `torch.where`: on the CPU `where` over channels-last float tensors
runs several times slower than an element-wise multiply, forward and backward (65 ms against 20 ms for
a 16 x 32 x 112 x 112 activation), and its output drops the channels-last layout when the mask is NCHW.
`select` computes the same values with `lerp` and a 0/1 weight in the tensor's own layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_BITS = torch.arange(8, dtype=torch.uint8)


def keep_mask(shape: tuple[int, ...], prob: float, generator: torch.Generator) -> torch.Tensor:
    """A bool tensor of `shape`, each element True with probability `prob`, drawn from `generator` (on the CPU)."""
    numel = 1
    for size in shape:
        numel *= int(size)
    if prob == 0.5:
        packed = torch.randint(0, 256, ((numel + 7) // 8,), dtype=torch.uint8, generator=generator)
        bits = packed.unsqueeze(1).bitwise_right_shift(_BITS).bitwise_and_(1)
        return bits.view(-1)[:numel].view(shape).bool()
    return torch.rand(shape, generator=generator) < prob


def qdrop_hook(prob: float, generator: torch.Generator,
               global_rows: Callable[[], tuple[torch.Tensor | None, int]]) -> Callable:
    """A QuantizeLinear output hook: each element keeps its quantized value with probability `prob`, else
    the hook returns x / scale + zero, which the DequantizeLinear after it maps back to x itself.

    `global_rows()` -> (rows, batch): under data parallelism the mask is drawn for the global batch of
    `batch` samples, as one process would, and this rank's `rows` of it are used; rows None: all of it.
    """

    def hook(inputs: list[torch.Tensor], quantized: torch.Tensor) -> torch.Tensor:
        x, scale = inputs[0], inputs[1]  # activation quantizers only: weights are DQ-only initializers
        zero = inputs[2].to(x.dtype) if len(inputs) > 2 and inputs[2] is not None else 0.0
        rows, batch = global_rows()
        if rows is None:
            keep = keep_mask(tuple(quantized.shape), prob, generator)
        else:
            keep = keep_mask((batch, *quantized.shape[1:]), prob, generator)[rows]
        return select(keep, quantized, x / scale + zero)

    return hook


def select(keep: torch.Tensor, chosen: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """torch.where(keep, chosen, other) for same-shape float tensors: the same values and gradients, in
    `chosen`'s memory layout (keep may be NCHW while the tensors are channels-last)."""
    if keep.shape != chosen.shape or other.shape != chosen.shape:
        raise ValueError(f"select: mask {tuple(keep.shape)}, chosen {tuple(chosen.shape)} and other "
                         f"{tuple(other.shape)} must have one shape")
    return _Select.apply(keep, chosen, other)


def _weight(keep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The bool mask as 0/1 in `like`'s dtype, device and layout (the layout converted on the bytes, 4x fewer)."""
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        keep = keep.contiguous(memory_format=torch.channels_last)
    return keep.to(device=like.device, dtype=like.dtype)


class _Select(torch.autograd.Function):
    """lerp(other, chosen, w) with w in {0, 1} is exact: ATen's lerp returns `other` for w < 0.5 and
    `chosen - (chosen - other) * (1 - w)` otherwise, so w = 1 gives `chosen` itself. The backward
    (grad * w to `chosen`, the rest to `other`) is exact the same way. Only the bool mask is kept for it."""

    @staticmethod
    def forward(ctx, keep: torch.Tensor, chosen: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(keep)
        return torch.lerp(other, chosen, _weight(keep, chosen))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor | None, torch.Tensor | None]:
        (keep,) = ctx.saved_tensors
        to_chosen = grad * _weight(keep, grad)
        to_other = grad - to_chosen if ctx.needs_input_grad[2] else None
        return None, to_chosen if ctx.needs_input_grad[1] else None, to_other
