"""Keep freed memory inside the process while a torch stage runs (glibc malloc), instead of handing it back.

Usage:
    with reuse_freed_memory(acceleration.reuse_memory):   # False, or not glibc: does nothing
        engine.run(...)                                   # the generation or reconstruction loop
    release_freed_memory(acceleration.reuse_memory)       # between phases of other tensor sizes: trim the heap
    reuse_available()                                     # True on Linux with glibc

Why: at 224x224 every step allocates tensors of tens of MB (a 16 x 64 x 112 x 112 activation is 51 MB).
glibc serves each allocation above its mmap threshold (at most 32 MB) with fresh pages from the kernel and
returns them on free, so every step pays for the kernel zeroing and mapping those pages again: on this
2-core machine a division over 3.2 M floats took 14 ms in the reconstruction loop against 0.6 ms on reused
memory. With mmap off and a high trim threshold, freed blocks stay in the heap and the next step reuses
them (bench/torch_speed.py, 30 iterations of MobileNetV2's first 3 units: 48.1 -> 33.3 s; generation
0.0292 -> 0.0184 s per image-iteration). The price is a higher peak: the heap keeps what it once held and
blocks freed in its middle cannot go back (+0.4 and +1.3 GB on Lite0's and ResNet-18's first 3 units), unless
release_freed_memory trims it between phases of other tensor sizes, as reconstruction does (then 3.03 and
3.28 GB against the old code's 2.82-2.94 and 3.05-3.29: README 'Torch stages at ImageNet size').

The settings are process-wide; on exit the defaults' values come back (glibc's adaptive mmap threshold stays
fixed at its start value from then on) and malloc_trim returns the free heap.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
KEEP_AT_TOP = 1 << 30  # free memory at the heap's top kept for reuse before trimming (bytes)
GLIBC_MMAP_MAX, GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults, restored on exit


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def reuse_available() -> bool:
    """Whether reuse_freed_memory can act here (Linux with glibc)."""
    return _glibc() is not None


def release_freed_memory(enabled: bool) -> None:
    """Between phases whose tensors differ in size (reconstruction's units; its distribution correction and its
    training loop): hand the heap's free memory back, so that what one phase left does not add to the next
    one's peak (blocks of other sizes rarely fit the new ones). One round of fresh pages per phase, not per step."""
    libc = _glibc() if enabled else None
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool) -> Iterator[None]:
    """Within the block, large allocations come from the heap and freed memory stays there (see the module)."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, KEEP_AT_TOP)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
        libc.malloc_trim(0)
