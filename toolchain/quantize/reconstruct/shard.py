"""Reconstruction over torch.distributed: each process holds a shard of the calibration set.

Usage:
    shard = Shard.of(n=len(calib), distributed=distributed, align=recon.dc_batch_size)   # one process: Shard.whole(n)
    local = calib[shard.start:shard.stop]                    # this process's samples
    positions, rows = shard.local(index)                     # of a global batch `index` (same on every rank)
    loss = shard.scaled(unit_loss_on_local_rows, len(rows), len(index))
    loss.backward(); shard.all_reduce_gradients(parameters, loss)  # every rank now steps with the same gradient

Scheme: every rank draws the same global batch of sample indices (one generator, same seed) and the
same random masks for the whole batch (QDrop), keeps the part that falls in its shard, and scales its
mean losses by local / global count, so the all-reduced (summed) gradient is the gradient of the loss
on the whole global batch: K processes take the steps one process would, up to the order of float
summation. Parameters stay identical on every rank (the same summed gradient, the same Adam step).
Shards are contiguous and start at multiples of `align` (distribution correction's batch), so
distribution correction sees the batches it would in one process. A rank that holds none of a global
batch runs one of its own samples with weight 0, so that every rank draws the same random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from toolchain.core.distributed import Distributed, shard_batches
from toolchain.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """Samples [start, stop) of `total` belong to this rank (`distributed` None: one process, all of them)."""

    start: int
    stop: int
    total: int
    distributed: Distributed | None = None

    @classmethod
    def whole(cls, n: int) -> Shard:
        return cls(0, n, n, None)

    @classmethod
    def of(cls, n: int, distributed, align: int = 1) -> Shard:
        if distributed is None or distributed.world_size <= 1:
            return cls.whole(n)
        blocks = -(-n // align)
        if blocks < distributed.world_size:
            raise ConfigError(f"{n} calibration images in blocks of {align} (the distribution-correction batch) "
                              f"cannot be shared by {distributed.world_size} processes: give at least "
                              f"{distributed.world_size * align} images, a smaller --dc-batch-size, or fewer processes")
        own = shard_batches(blocks, distributed.world_size, distributed.rank)  # the same split as generation's
        return cls(own.start * align, min(n, own.stop * align), n, distributed)

    @property
    def is_whole(self) -> bool:
        return self.distributed is None

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def rank(self) -> int:
        return 0 if self.distributed is None else self.distributed.rank

    def local(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions in the global batch, rows of this shard) of the global sample indices `index`."""
        if self.is_whole:
            return torch.arange(len(index)), index
        inside = (index >= self.start) & (index < self.stop)
        positions = inside.nonzero().reshape(-1)
        return positions, index[positions] - self.start

    @staticmethod
    def scaled(loss: torch.Tensor, local: int, global_count: int) -> torch.Tensor:
        """A mean over `local` samples as its share of the mean over `global_count` (the sum of shares)."""
        return loss if local == global_count else loss * (local / global_count)

    def all_reduce_gradients(self, parameters: list[torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
        """Sum the gradients of `parameters` and the loss shares over the ranks (one collective); returns the
        global loss (every rank must know when it is not finite). A missing gradient counts as 0."""
        if self.distributed is None:  # is_whole
            return loss
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = self.distributed.all_reduce_sum(torch.cat([*(g.reshape(-1) for g in grads), loss.reshape(1).to(loss.device)]))
        offset = 0
        for p, g in zip(parameters, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).to(p.device)
            offset += g.numel()
        return flat[-1]

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.distributed is None else self.distributed.all_reduce_sum(values)
