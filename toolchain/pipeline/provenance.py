"""Where a run's numbers came from: the versions of everything that computes them, and the machine.

Usage:
    provenance()   # {"toolchain": "0.1.0", "onnx": ..., "onnxruntime": ..., "torch": ..., "cpu": {...}, ...}
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import toolchain
from toolchain.core.cpu import has_vnni
from toolchain.core.execution import usable_cores

PACKAGES = ("onnx", "onnxruntime", "torch", "numpy", "openvino", "onnxruntime-qnn")


def provenance() -> dict:
    """Versions of the toolchain, Python and PACKAGES (None when not installed), and the CPU's integer features."""

    versions: dict[str, str | None] = {"toolchain": toolchain.__version__, "python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {**versions, "platform": platform.platform(), "machine": platform.machine(),
            "cpu": {"vnni": has_vnni(), "usable_cores": usable_cores()}}
