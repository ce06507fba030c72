"""The model's input preprocessing, stored in the ONNX file's metadata so later stages need no side files.

Usage:
    pre = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=(32, 32))
    write_preprocessing(model_proto, pre)          # stamps metadata_props["toolchain.preprocessing"]
    pre = read_preprocessing(model_proto)          # None when the file carries none
    batch = pre.apply(uint8_nhwc_images)           # float32 NCHW, ready for the model

A raw uint8 pixel p becomes ((p / pixel_scale) - mean[c]) / std[c], channels in `channel_order`,
layout NCHW. Images of another size are resized (shorter side to input_size / crop_fraction) and
centre-cropped by the data loader.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from toolchain.errors import PreprocessingError

METADATA_KEY = "toolchain.preprocessing"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become model inputs.

    Attributes:
        mean: per-channel mean subtracted after scaling, in `channel_order`.
        std: per-channel standard deviation divided after subtracting the mean.
        input_size: (height, width) the model expects.
        channel_order: "RGB" or "BGR" (order of the model's input channels).
        pixel_scale: raw pixels are divided by this first (255 maps uint8 to [0, 1]).
        crop_fraction: centre-crop fraction used when resizing images of another size (1.0 = none).
        class_names: label names, index = class id; None when unknown.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int]
    channel_order: Literal["RGB", "BGR"] = "RGB"
    pixel_scale: float = 255.0
    crop_fraction: float = 1.0
    class_names: tuple[str, ...] | None = None
    version: int = field(default=FORMAT_VERSION, compare=False)

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise PreprocessingError(
                f"mean has {len(self.mean)} values and std has {len(self.std)}: give one value per input channel for both"
            )
        if any(s <= 0 for s in self.std):
            raise PreprocessingError(f"std must be positive, got {self.std}")
        if len(self.input_size) != 2 or any(int(v) <= 0 for v in self.input_size):
            raise PreprocessingError(f"input size must be two positive integers (height, width), got {self.input_size}")
        if self.channel_order not in ("RGB", "BGR"):
            raise PreprocessingError(f"channel order must be RGB or BGR, got {self.channel_order!r}")
        if self.pixel_scale <= 0:
            raise PreprocessingError(f"pixel scale must be positive, got {self.pixel_scale}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise PreprocessingError(f"crop fraction must be in (0, 1], got {self.crop_fraction}")

    @property
    def num_channels(self) -> int:
        return len(self.mean)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """uint8 (or float) NHWC images in RGB order, already at input_size -> float32 NCHW model input."""
        if images.ndim != 4 or images.shape[-1] != self.num_channels:
            raise PreprocessingError(
                f"expected NHWC images with {self.num_channels} channels, got an array of shape {images.shape}"
            )
        x: np.ndarray = images.astype(np.float32) / np.float32(self.pixel_scale)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def input_range(self) -> tuple[float, float]:
        """The smallest and largest value any image can give the model: raw pixels span [0, pixel_scale]
        (uint8 images: 255), so each channel spans [-mean/std, (1 - mean)/std]."""
        mean, std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        return float((-mean / std).min()), float(((1.0 - mean) / std).max())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        if not isinstance(data, dict):
            raise PreprocessingError(f"preprocessing metadata is {type(data).__name__}, not a JSON object; stamp it again "
                                     "with `toolchain stamp`")
        try:
            version = int(data.get("version", FORMAT_VERSION))
        except (TypeError, ValueError) as err:
            raise PreprocessingError(f"preprocessing metadata has a non-integer version ({err}); stamp it again") from err
        if version > FORMAT_VERSION:
            raise PreprocessingError(
                f"preprocessing metadata has format version {version}; this toolchain reads up to {FORMAT_VERSION}: upgrade it"
            )
        try:
            names = data.get("class_names")
            return cls(
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                input_size=(int(data["input_size"][0]), int(data["input_size"][1])),
                channel_order=data.get("channel_order", "RGB"),
                pixel_scale=float(data.get("pixel_scale", 255.0)),
                crop_fraction=float(data.get("crop_fraction", 1.0)),
                class_names=tuple(str(n) for n in names) if names else None,
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise PreprocessingError(f"preprocessing metadata is malformed ({err!r}); stamp it again with `toolchain stamp`") from err

    def with_overrides(self, **changes: Any) -> Preprocessing:
        """A copy with the given (non-None) fields replaced."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def read_preprocessing(model: Any) -> Preprocessing | None:
    """The Preprocessing stamped in an onnx.ModelProto's metadata, or None when there is none."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return Preprocessing.from_dict(json.loads(prop.value))
            except json.JSONDecodeError as err:
                raise PreprocessingError(f"metadata {METADATA_KEY!r} is not valid JSON ({err}); stamp it again with `toolchain stamp`") from err
    return None


def write_preprocessing(model: Any, pre: Preprocessing) -> None:
    """Stamp `pre` into an onnx.ModelProto's metadata (replacing an earlier stamp)."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    prop = model.metadata_props.add()
    prop.key = METADATA_KEY
    prop.value = json.dumps(pre.to_dict(), sort_keys=True)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessingOverrides:
    """Preprocessing fields given on the command line (None = not given)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int, int] | None = None
    channel_order: Literal["RGB", "BGR"] | None = None
    pixel_scale: float | None = None
    crop_fraction: float | None = None
    class_names: tuple[str, ...] | None = None

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def resolve_preprocessing(
    stored: Preprocessing | None,
    overrides: PreprocessingOverrides,
    source: str,
    static_size: tuple[int, int] | None = None,
) -> Preprocessing:
    """Stored metadata with command-line overrides on top; a clear error when something is missing.

    `static_size` is the (H, W) of the model's input when the graph fixes it; it stands in for a
    missing --input-size.
    """
    given = overrides.given()
    if stored is not None:
        return stored.with_overrides(**given)
    if static_size is not None:
        given.setdefault("input_size", static_size)
    missing = [f"--{name.replace('_', '-')}" for name in ("mean", "std", "input_size") if name not in given]
    if missing:
        raise PreprocessingError(
            f"{source} carries no preprocessing metadata and {', '.join(missing)} {'was' if len(missing) == 1 else 'were'} not given: "
            f"pass --mean, --std and --input-size, or stamp them into the file once with "
            f"`toolchain stamp {source} --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --input-size 224`"
        )
    return Preprocessing(**given)
