"""QDrop's random masks: which elements of an activation go on quantized, and which in float.

Usage:
    keep = keep_mask((16, 32, 112, 112), prob=0.5, generator=g)   # bool; True = the quantized value
    hook = qdrop_hook(0.5, g, global_rows=lambda: (rows, batch))   # for OnnxModule.output_hooks on QuantizeLinear
    with module.output_hooks({name: hook for name in quantizers}):
        out = module(x)

QDrop (Wei et al., 2022) lets a random half of each activation through unquantized at every step. At
224x224 the masks are as large as the activations (6.4 M elements for 16 images of 32 x 112 x 112), and
one float draw per element from the generator cost as much as the unit's own convolutions. At the
usual probability of 0.5 each element needs one random bit, so the mask is drawn as random bytes and
unpacked, eight elements per draw (bench/torch_speed.py: ~5x faster than `torch.rand(...) < 0.5` on
the 2-core CPU). Other probabilities compare a uniform float per element, as QDrop writes it.
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
        return torch.where(keep.to(quantized.device), quantized, x / scale + zero)

    return hook
