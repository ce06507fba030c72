"""Top-1 / top-5 accuracy of an ONNX classifier on labelled images, in onnxruntime, OpenVINO or QNN (HTP).

Usage:
    result = evaluate("resnet20.onnx", "../shared/datasets/cifar10-test-jpg.tar.gz", pre)
    result = evaluate("resnet20_int8.onnx", data, pre, reference_path="resnet20.onnx", limit=1000)
    result = evaluate("r20_qnn.onnx", data, pre, runtime="qnn", limit=500)     # the HTP emulator
    print(result.top1, result.agreement)       # result.to_dict() for JSON

The model file is opened by onnxruntime as is: validate it first (graph.load_model) for clear errors.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from toolchain.data.images import open_images
from toolchain.errors import ConfigError, DataError, GraphError, PreprocessingError
from toolchain.onnxio.preprocessing import Preprocessing
from toolchain.runtimes import open_runtime

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one model on one dataset.

    Attributes:
        top1, top5: fraction of images whose label is the top / among the top 5 predictions
            (top5 equals top1 when the model has fewer than 5 classes).
        n: number of images.
        agreement: fraction of images where the model's and the reference model's top-1 agree; None without one.
        images_per_second: model inference throughput (decoding and the reference model excluded).
        seconds: wall time of the whole evaluation, reading the data included.
    """

    top1: float
    top5: float
    n: int
    agreement: float | None
    images_per_second: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MAX_BATCH = 256
BATCH_INPUT_BYTES = 32 << 20  # float32 input per batch by default: the activations scale with it


def default_batch_size(pre: Preprocessing) -> int:
    """MAX_BATCH images, fewer when the input is large: at most BATCH_INPUT_BYTES of float32 input (55 images
    at 3x224x224). At 224, batches of 256 peaked at 5.5-7.5 GB evaluating bench/imagenet.py's QDQ models;
    onnxruntime's throughput is flat beyond a few dozen images, the memory is not."""
    per_image = 4 * pre.num_channels * pre.input_size[0] * pre.input_size[1]
    return max(1, min(MAX_BATCH, BATCH_INPUT_BYTES // per_image))


def evaluate(
    model_path: PathLike,
    data_path: PathLike,
    pre: Preprocessing,
    reference_path: PathLike | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    threads: int = 2,
    progress: bool = True,
    seed: int | None = 0,
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
    runtime: str = "ort",
) -> EvalResult:
    """Evaluate `model_path` on `data_path` (see data.open_images); `limit` images, a random sample drawn
    with `seed` (the first `limit` when seed is None: in sorted order those are only the first classes).
    `runtime`: ort, openvino or qnn (toolchain.runtimes) runs the model; the reference always runs in ort.
    `batch_size`: images per run; None = default_batch_size(pre)."""
    batch_size = default_batch_size(pre) if batch_size is None else batch_size
    if batch_size < 1 or threads < 1:
        raise ConfigError(f"batch size and threads must be at least 1, got {batch_size} and {threads}")
    start = time.perf_counter()
    data = open_images(data_path, pre, limit=limit, seed=seed)
    model = _Classifier(model_path, pre, threads, providers, runtime)
    reference = _Classifier(reference_path, pre, threads, providers) if reference_path is not None else None

    max_label = int(data.labels.max())
    correct1 = correct5 = agree = 0
    model_seconds = 0.0
    with tqdm(total=len(data), unit="img", desc=f"evaluate {Path(model_path).name}", file=sys.stderr, disable=not progress) as bar:
        for inputs, labels in data.batches(model.batch_size or batch_size):
            tick = time.perf_counter()
            logits = model(inputs)
            model_seconds += time.perf_counter() - tick
            if logits.shape[1] <= max_label:
                raise DataError(
                    f"{data_path}: labels go up to {max_label} but {model_path} outputs {logits.shape[1]} classes: "
                    "the dataset does not fit this model"
                )
            top1 = logits.argmax(axis=1)
            correct1 += int((top1 == labels).sum())
            if logits.shape[1] >= 5:
                top5 = np.argpartition(-logits, 4, axis=1)[:, :5]
                correct5 += int((top5 == labels[:, None]).any(axis=1).sum())
            if reference is not None:
                agree += int((reference(inputs).argmax(axis=1) == top1).sum())
            bar.update(len(labels))
    if logits.shape[1] < 5:
        correct5 = correct1
    n = len(data)
    return EvalResult(
        top1=correct1 / n,
        top5=correct5 / n,
        n=n,
        agreement=agree / n if reference is not None else None,
        images_per_second=n / model_seconds if model_seconds > 0 else float("inf"),
        seconds=time.perf_counter() - start,
    )


class _Classifier:
    """A runtime session (toolchain.runtimes) mapping float32 NCHW batches to (N, classes) logits."""

    def __init__(self, path: PathLike, pre: Preprocessing, threads: int,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",), runtime: str = "ort") -> None:

        self.session = open_runtime(runtime, path, threads, providers)
        names = getattr(self.session, "input_names", [self.session.input_name])
        if len(names) != 1:
            raise GraphError(f"{path}: the model has {len(names)} inputs ({', '.join(names)}); evaluation feeds one image input")
        self.input = self.session.input_name
        shape = list(self.session.input_shape)
        expected = [None, pre.num_channels, *pre.input_size]
        if len(shape) != 4 or any(isinstance(d, int) and e is not None and d != e for d, e in zip(shape, expected)):
            raise PreprocessingError(
                f"{path}: input {self.input!r} has shape {shape} but the preprocessing gives (N, {pre.num_channels}, "
                f"{pre.input_size[0]}, {pre.input_size[1]}): fix the input size / channels with `toolchain stamp`"
            )
        # A model exported with a fixed batch dimension only accepts batches of exactly that size.
        self.batch_size = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        n = len(inputs)
        if self.batch_size is not None and n < self.batch_size:
            inputs = np.concatenate([inputs, np.zeros((self.batch_size - n, *inputs.shape[1:]), inputs.dtype)])
        logits = self.session.run(inputs)
        return np.asarray(logits).reshape(len(inputs), -1)[:n]
