"""A model file opened once: read, validated, its preprocessing resolved and its graph run once in onnxruntime.

Usage:
    model = open_model("resnet20.onnx")                      # ModelFileError / GraphError / ConfigError, one line
    model.proto, model.preprocessing, model.source           # what every later stage takes instead of the path
    pre = model_preprocessing(proto, PreprocessingOverrides(mean=(0.5,), std=(0.5,)), "theirs.onnx")

`toolchain run` opens its FP32 model once and hands the LoadedModel to generation, evaluation and each
quantization; the single commands (toolchain generate, evaluate) open theirs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from toolchain.errors import ConfigError
from toolchain.onnxio.files import load_model
from toolchain.onnxio.graph import image_input
from toolchain.onnxio.preprocessing import Preprocessing, PreprocessingOverrides, read_preprocessing, resolve_preprocessing
from toolchain.onnxio.validate import check_runs


@dataclass(frozen=True)
class LoadedModel:
    """A model read from the file `source` (as the user gave it: messages name it so) that passed every check."""

    proto: onnx.ModelProto
    source: str
    preprocessing: Preprocessing

    @property
    def path(self) -> Path:
        return Path(self.source)

    def copy(self) -> onnx.ModelProto:
        """A copy of the graph for a stage that changes it (quantization folds BN in place)."""
        copied = onnx.ModelProto()
        copied.CopyFrom(self.proto)
        return copied


def model_preprocessing(proto: onnx.ModelProto, overrides: PreprocessingOverrides, source: str) -> Preprocessing:
    """The preprocessing to use for `proto`: its metadata, overridden by options; checked against its input."""
    info = image_input(proto, source)
    height, width = info.shape[2], info.shape[3]
    static = (height, width) if isinstance(height, int) and isinstance(width, int) else None
    pre = resolve_preprocessing(read_preprocessing(proto), overrides, source, static)
    channels = info.shape[1]
    if isinstance(channels, int) and channels != pre.num_channels:
        raise ConfigError(
            f"{source}: input {info.name!r} has {channels} channels but the preprocessing gives "
            f"{pre.num_channels} mean/std values; pass --mean/--std with {channels} values"
        )
    if static is not None and static != pre.input_size:
        raise ConfigError(f"{source}: input {info.name!r} is {static[0]}x{static[1]} but --input-size says "
                          f"{pre.input_size[0]}x{pre.input_size[1]}")
    return pre


def open_model(path: str | Path, overrides: PreprocessingOverrides = PreprocessingOverrides()) -> LoadedModel:
    """Read `path` (ModelFileError when it is not a usable ONNX file), resolve its preprocessing and run it once
    in onnxruntime on a zero image (GraphError when it does not run or gives non-finite outputs)."""
    proto = load_model(path)
    pre = model_preprocessing(proto, overrides, str(path))
    check_runs(proto, str(path), pre.input_size)
    return LoadedModel(proto, str(path), pre)
