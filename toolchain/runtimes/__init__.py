"""Runtimes that execute the QDQ models: onnxruntime (CPU), OpenVINO (CPU) and Qualcomm QNN (HTP).

`reference` is onnxruntime with its graph optimisations off: every Q/DQ runs as written, so it gives the
file's exact semantics, which integer kernels approximate (x86 CPUs without VNNI saturate full-range
8-bit weights: quant.config reduce_range). Compare a runtime against it to see what the runtime changes.

Usage:
    session = open_runtime("openvino", "r20_w8a8.onnx", threads=2)   # RuntimeSession
    logits = session.run(batch)                                      # float32 (N, classes) from (N, C, H, W)
    session.input_shape                                              # [N or None, C, H, W]
    coverage = runtime_coverage("qnn", "r20_qnn.onnx")               # what that runtime runs on integers
    runtime_agreement_db("qnn", "r20_qnn.onnx", calib[:8])           # SQNR of its outputs against `reference`

Each runtime is an optional package (extras `openvino`, `qnn`): asking for one that is not installed is
a ConfigError naming the extra. On x86, QNN's HTP backend is Qualcomm's emulator: its results are the
NPU's arithmetic, its speed is not the NPU's.
"""

from __future__ import annotations

import importlib
import os
from typing import Protocol

import numpy as np

from toolchain.core.metrics import sqnr_db
from toolchain.errors import ConfigError

RUNTIMES = ("ort", "reference", "openvino", "qnn")
_MODULES = {"ort": "toolchain.runtimes.ort", "reference": "toolchain.runtimes.ort", "openvino": "toolchain.runtimes.openvino",
            "qnn": "toolchain.runtimes.qnn"}
PathLike = str | os.PathLike[str]


class RuntimeSession(Protocol):
    input_name: str
    input_shape: list[int | str | None]  # str or None: a dynamic dim

    def run(self, inputs: np.ndarray) -> np.ndarray: ...


def _module(name: str):
    if name not in _MODULES:
        raise ConfigError(f"unknown runtime {name!r}: choose one of {', '.join(RUNTIMES)}")
    return importlib.import_module(_MODULES[name])


def open_runtime(name: str, path: PathLike, threads: int = 2, providers: tuple[str, ...] | None = None) -> RuntimeSession:
    """A session of `path` in runtime `name`; `providers` only applies to onnxruntime."""
    module = _module(name)
    if name in ("ort", "reference"):
        return module.OrtSession(path, threads, providers or ("CPUExecutionProvider",), optimize=name == "ort")
    return module.open_session(path, threads)


def runtime_coverage(name: str, path: PathLike, threads: int = 2) -> dict:
    """What runtime `name` runs on integer kernels in `path` (keys: runtime, coverage, integer_layers,
    float_layers, layers: [{type, precision, name}], notes); see each runtime's module."""
    return _module(name).coverage(path, threads)


def missing_runtime(package: str, extra: str) -> ConfigError:
    return ConfigError(f"this needs the {package} package, which is not installed: pip install -e \".[{extra}]\" "
                       f"(or pip install {package})")


def runtime_agreement_db(name: str, path: PathLike, inputs: np.ndarray, threads: int = 2) -> float:
    """SQNR in dB of runtime `name`'s outputs on `inputs` against `reference` (the file's exact Q/DQ semantics).

    Integer kernels round differently from the float Q/DQ arithmetic; a runtime that runs the file right
    measures 28-48 dB on ResNet-20, a wrong layer or saturating kernels 13 dB or less (quantize.target_check).
    A fixed batch is fed in slices of that size."""
    session, reference = open_runtime(name, path, threads), open_runtime("reference", path, threads)
    fixed = session.input_shape[0] if isinstance(session.input_shape[0], int) else None
    step = fixed or len(inputs)
    usable = len(inputs) - len(inputs) % step
    if usable == 0:
        raise ValueError(f"runtime_agreement_db needs at least {step} inputs (the model's fixed batch)")

    got = np.concatenate([session.run(inputs[i:i + step]) for i in range(0, usable, step)])
    want = np.concatenate([reference.run(inputs[i:i + step]) for i in range(0, usable, step)])
    return sqnr_db(want, got)
