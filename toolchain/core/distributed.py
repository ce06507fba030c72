"""Scale-out of image optimisation over torch.distributed: K processes optimise one calibration set.

Usage:
    torchrun --nproc-per-node 2 -m toolchain.cli generate MODEL.onnx --method dgh -n 1024 -o calib_data/dgh1024.npz

    with distributed_session() as distributed:      # None unless launched by torchrun with WORLD_SIZE > 1
        calib = generate(model, pre, "dgh", 1024, distributed=distributed)   # rank 0: the full set; others: None
        if distributed is None or distributed.rank == 0:
            save_calibration(path, calib)
    # the process group is destroyed on the way out, error or not: a process that exits with gloo's threads
    # still running can die in `terminate called without an active exception` (SIGABRT) after its work is done

Scheme (docs in engine.py too):
  - Sharding: the J batches (augment.batch_sizes) are split into K contiguous blocks whose lengths differ
    by at most one (`shard_batches`); rank r optimises only its block. J >= K is required.
  - Randomness does not depend on K: batch j's initial images, augmentation draws (flip, crop) and FDDA
    noise come from a generator seeded with (seed, j); the visit order of each outer iteration is one
    permutation of all J batches drawn from a generator seeded with `seed` (identical on every rank),
    and each rank visits its own batches in that relative order.
  - Communication (joint statistics, DGH): every rank keeps the stored per-batch moments of its own
    batches only (the other rows of `stored` are zero). Each step position does exactly one all-reduce of
    the count-weighted sum of the stored moments, (2, sum C_l + C_in) floats; a rank whose block is shorter
    joins that all-reduce without stepping. Batch j's whole-set moments = all-reduced sum - its own stored
    entry + its live moments. Staleness: at step position s of an outer iteration, another rank's batch
    contributes its moments as refreshed after its owner's step s-1 (in one process it would be the
    refresh of whichever step preceded in the global order); own batches are as in one process.
    Per-batch methods (bns, fdda) communicate only at the end.
  - End: evaluate() all-reduces the loss sums and moment sums (one all-reduce, float64); rank 0 gathers the
    image shards (variable size, padded) in rank order = global batch order; other ranks return None.
  - Checkpoints: one file per rank, the given path + ".rankR" (added unless the path already ends with
    it); resume needs the same world size, and refuses per-rank files written at different iterations.
Backends: gloo for CPU tensors (what distributed_from_env initialises); an already initialised nccl group
works too: collectives move tensors to the current CUDA device and back.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, Protocol, runtime_checkable

import torch

from toolchain.errors import ConfigError


@runtime_checkable
class Distributed(Protocol):
    """What `generate` needs from a distributed run."""

    rank: int
    world_size: int
    backend: str

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of `tensor` over all processes (a new tensor; the input is unchanged)."""
        ...

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor] | None:
        """Rank 0: every rank's `tensor` in rank order (first dimensions may differ); other ranks: None."""
        ...

    def barrier(self) -> None: ...


class TorchDistributed:
    """Distributed over the default torch.distributed process group (initialised by the caller)."""

    def __init__(self, owns_group: bool = False) -> None:
        import torch.distributed as dist  # deferred: torch loads only when this runs (start-up time)

        if not dist.is_initialized():
            raise ConfigError("torch.distributed is not initialised: call distributed_from_env() under torchrun")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.backend = str(dist.get_backend())
        self.owns_group = owns_group  # initialised by distributed_from_env: close() destroys it

    def close(self) -> None:
        """Destroy the process group if this object initialised it (a caller's own group is left alone)."""
        if self.owns_group and self._dist.is_initialized():
            self._dist.destroy_process_group()
        self.owns_group = False

    def __repr__(self) -> str:
        return f"TorchDistributed(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"

    @property
    def device(self) -> torch.device:
        """Where collectives run: the current CUDA device for nccl, the CPU otherwise."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        work = tensor.detach().to(self.device, copy=True).contiguous()
        self._dist.all_reduce(work, op=self._dist.ReduceOp.SUM)
        return work.to(tensor.device)

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor] | None:
        """Variable first dimension: sizes are all-gathered, shards padded to the largest, trimmed on rank 0."""
        dist, device = self._dist, self.device
        length = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=device)
        lengths = [torch.zeros_like(length) for _ in range(self.world_size)]
        dist.all_gather(lengths, length)
        sizes = [int(v) for v in lengths]
        padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=device)
        padded[: tensor.shape[0]] = tensor.detach().to(device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(padded, gather_list=parts, dst=0)
        if parts is None:
            return None
        return [part[:size].to(tensor.device) for part, size in zip(parts, sizes)]

    def barrier(self) -> None:
        self._dist.barrier()


def distributed_from_env(backend: str = "gloo") -> TorchDistributed | None:
    """None unless launched by torchrun with WORLD_SIZE > 1; then the (initialised if need be) process group.

    torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; the group is initialised from them with
    `backend` ("gloo": CPU tensors) unless the caller initialised it already.
    """
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1") or "1")
    except ValueError as err:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with torchrun") from err
    if world_size <= 1:
        return None
    import torch.distributed as dist  # deferred: torch loads only when this runs (start-up time)

    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run a single process")
    if not dist.is_initialized():
        missing = [key for key in ("RANK", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE={world_size} is set but {', '.join(missing)} are not: launch with "
                              "torchrun --nproc-per-node K (or unset WORLD_SIZE for one process)")
        dist.init_process_group(backend)
        return TorchDistributed(owns_group=True)
    return TorchDistributed()


def exit_process(code: int = 0) -> NoReturn:
    """End a torchrun worker now, once its work is written: flush, then os._exit, skipping interpreter teardown.

    With the process group destroyed, 1 of 50 runs of the distributed tests still died in SIGABRT ("terminate
    called without an active exception") at exit under memory pressure: a C++ thread object of the
    communication backend destroyed during teardown. Nothing is left to do at that point, so the
    teardown is skipped; the exit code is the run's own.
    """

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


@contextlib.contextmanager
def distributed_session(backend: str = "gloo") -> Iterator[TorchDistributed | None]:
    """`distributed_from_env(backend)` for the duration of the block; the group it created is destroyed after,
    so the process exits cleanly (exit code 0 once the output is written)."""
    distributed = distributed_from_env(backend)
    try:
        yield distributed
    finally:
        if distributed is not None:
            distributed.close()


def shard_batches(num_batches: int, world_size: int, rank: int) -> range:
    """Rank `rank`'s contiguous block of batch indices; block lengths differ by at most one (first ranks longer)."""
    if num_batches < world_size:
        raise ConfigError(f"{num_batches} batch(es) cannot be shared by {world_size} processes: every process needs at "
                          f"least one batch; ask for more images (n >= {world_size} x batch size), a smaller batch "
                          "size, or fewer processes")
    base, extra = divmod(num_batches, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def rank_path(path: Path, distributed: Distributed | None) -> Path:
    """This process's checkpoint file: `path` itself in one process, `path` + ".rankR" under distributed."""
    if distributed is None or distributed.world_size <= 1:
        return path
    suffix = f".rank{distributed.rank}"
    return path if path.name.endswith(suffix) else path.with_name(path.name + suffix)
