"""What the CPU the toolchain runs on can do, where it matters for the integer kernels it measures with.

Usage:
    has_vnni()      # True / False on Linux x86 (from /proc/cpuinfo), None where it cannot tell

onnxruntime's x86 u8s8 kernels use VNNI (AVX-512 VNNI or AVX-VNNI) where the CPU has it; without it
they add pairs of u8 x s8 products in int16 with saturation, which full-range 8-bit weights overflow
(QuantConfig.reduce_range).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def has_vnni() -> bool | None:
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return any(flag in flags for flag in VNNI_FLAGS)
