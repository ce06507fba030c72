"""Per-sample tensors of reconstruction (unit inputs, FP targets) within a memory budget, spilled to disk beyond it.

Usage:
    with SampleCache(budget_bytes=2 << 30) as cache:         # spill files live in a temporary folder, removed after
        x = cache.store(n=1024, sample_shape=(64, 56, 56))  # in RAM while it fits the budget, else a file
        x.write(0, first_batch); x.write(len(first_batch), next_batch) ...
        batch = x.read(torch.tensor([5, 17, 3]))            # rows by index (a new tensor), or x.read(slice(0, 64))
        x.release()                                         # gives its bytes back to the budget (and deletes its file)

Reconstruction keeps, for every calibration sample, the unit's input from the quantized and from the FP
network and the FP unit's output; at 224x224 that is megabytes per sample per tensor. A store that fits
the remaining budget is a torch tensor in RAM; one that does not is a raw file of float32 rows, written
batch by batch and read back through a memory map opened for each read, so only the rows of one batch
are ever resident (a map held open would keep every page it touched in the process's memory). Both
kinds give the same values bit for bit, so a run that spills trains the same model as one that does not.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from toolchain.errors import ConfigError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str, what: str = "cache budget", example: str = "4G, 512M or 0 (always spill to disk)") -> int:
    """'2G', '512M', '120KB', '1.5g', '0' or a plain number of bytes -> bytes (K, M, G, T: powers of 1024);
    ConfigError naming `what` and the value otherwise."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")  # 2GB, 2GiB and 2G all mean 2 * 2**30
    unit = value[-1:] if value[-1:] in _UNITS and not value[-1:].isdigit() else ""
    number = value[: len(value) - len(unit)]
    try:
        size = float(number)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a size: write e.g. {example}") from None
    if size < 0:
        raise ConfigError(f"{what} {text!r} is negative: write e.g. {example}")
    return int(size * _UNITS[unit])


def available_memory() -> int:
    """Bytes of memory the kernel says are available now (MemAvailable), or free pages where /proc is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


DEFAULT_BUDGET_CAP = 1 << 30


def default_budget() -> int:
    """A quarter of the memory available when reconstruction starts, at most 1 GiB.

    Spilling costs little while the machine has memory to spare: the spill files then live in the page
    cache, which the kernel gives back when it needs it, unlike a process's own memory. Measured on
    ResNet-18 @224, W4A4 pdquant fast, 1024 images (bench/scale.py): half the available memory as the
    budget kept 11.5 GB in RAM (peak 14.1 GB, 815 s); 1 GiB spilled the rest (peak 4.3 GB, 853 s: +5 %).
    """
    return min(available_memory() // 4, DEFAULT_BUDGET_CAP)


class SampleStore:
    """`n` samples of one shape (float32), in RAM or in a spill file; written in order, read by row index."""

    def __init__(self, cache: SampleCache | None, n: int, sample_shape: tuple[int, ...], path: Path | None) -> None:
        self.cache, self.n, self.sample_shape, self.path = cache, n, tuple(sample_shape), path
        self.nbytes = n * int(np.prod(sample_shape, dtype=np.int64)) * 4
        self._ram = torch.empty((n, *sample_shape), dtype=torch.float32) if path is None else None
        if path is not None:
            with open(path, "wb") as handle:
                handle.truncate(self.nbytes)

    @classmethod
    def wrapping(cls, values: torch.Tensor) -> SampleStore:
        """A store over a tensor the caller holds anyway (the calibration images): not counted in any budget."""
        store = cls.__new__(cls)
        store.cache, store.n, store.sample_shape, store.path = None, len(values), tuple(values.shape[1:]), None
        store.nbytes, store._ram = 0, values
        return store

    @property
    def spilled(self) -> bool:
        return self._ram is None

    def __len__(self) -> int:
        return self.n

    def _map(self, mode: Literal["r", "r+"]) -> np.memmap:
        assert self.path is not None, "only a spilled store has a file"
        return np.memmap(self.path, dtype=np.float32, mode=mode, shape=(self.n, *self.sample_shape))

    def write(self, start: int, values: torch.Tensor) -> None:
        values = values.detach().to("cpu", torch.float32)
        if self._ram is not None:
            self._ram[start:start + len(values)] = values
            return
        mapped = self._map("r+")
        mapped[start:start + len(values)] = values.numpy()
        mapped.flush()
        del mapped  # unmapped: the written pages are the page cache's now, not this process's

    def read(self, rows: slice | torch.Tensor) -> torch.Tensor:
        """The rows (a slice, or a 1-D index tensor in any order, repeats allowed) as a new CPU tensor."""
        if self._ram is not None:
            return self._ram[rows]  # a slice is a view: callers never write into what they read
        mapped = self._map("r")
        picked = np.array(mapped[rows] if isinstance(rows, slice) else mapped[rows.numpy()], dtype=np.float32)
        del mapped
        return torch.from_numpy(picked)

    def release(self) -> None:
        if self.cache is not None:
            self.cache._free(self)
        self._ram, self.cache = None, None


class SampleCache:
    """Hands out SampleStores: in RAM while their total stays within `budget_bytes`, spill files after."""

    def __init__(self, budget_bytes: int | None = None, spill_dir: str | Path | None = None) -> None:
        self.budget = default_budget() if budget_bytes is None else int(budget_bytes)
        self.in_ram = 0
        self.peak_in_ram = 0
        self.spilled_bytes = 0  # total ever written to disk (the report says how much spilled)
        self._parent = spill_dir
        self._folder: Path | None = None
        self._count = 0

    def __enter__(self) -> SampleCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def store(self, n: int, sample_shape: tuple[int, ...]) -> SampleStore:
        nbytes = n * int(np.prod(sample_shape, dtype=np.int64)) * 4
        if self.in_ram + nbytes <= self.budget:
            self.in_ram += nbytes
            self.peak_in_ram = max(self.peak_in_ram, self.in_ram)
            return SampleStore(self, n, sample_shape, None)
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="toolchain-recon-", dir=self._parent))
        self._count += 1
        self.spilled_bytes += nbytes
        return SampleStore(self, n, sample_shape, self._folder / f"store{self._count}.f32")

    def _free(self, store: SampleStore) -> None:
        if store.spilled:
            if store.path is not None:
                store.path.unlink(missing_ok=True)
        else:
            self.in_ram -= store.nbytes

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
