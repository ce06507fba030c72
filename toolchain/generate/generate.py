"""generate(): a calibration set from an ONNX model alone (dgh, bns, gaussian) or with a few real images (fdda, real).

Usage:
    calib = generate(model_proto, pre, "dgh", n=1024, config=preset("default", "dgh"), seed=0,
                     checkpoint=Path("calib_data/dgh.ckpt"))          # resume=True continues it
    save_calibration("calib_data/dgh1024.npz", calib)                 # atomic

The inputs are float32 (n, C, H, W) in the model's normalised input space, inside the valid pixel range.
The manifest records the method, preset, every hyperparameter, seed, the model's sha256, the initial and
final loss terms, timings and the toolchain version.

`distributed`: None (one process), or a distributed.Distributed (rank, world_size, backend,
all_reduce_sum, gather, barrier), e.g. `distributed_from_env()` under
`torchrun --nproc-per-node 2 -m toolchain.cli generate MODEL.onnx --method dgh -n 1024 -o calib_data/dgh1024.npz`.
Every process must call generate with the same arguments. Each optimises a contiguous block of the
batches, the whole-set BN moments are all-reduced at every step (distributed.py), and rank 0 returns the
full CalibrationSet (images in global batch order; the manifest records world_size and backend) while the
other ranks return None. gaussian and real involve no optimisation: rank 0 computes them alone. The
checkpoint is one file per rank, `checkpoint` + ".rankR" (distributed.rank_path).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, overload

import numpy as np
import onnx
import torch

import toolchain
from toolchain.core.acceleration import Acceleration
from toolchain.core.distributed import Distributed, rank_path
from toolchain.core.memory import reuse_freed_memory
from toolchain.data.calibration import CalibrationSet
from toolchain.data.images import open_images
from toolchain.errors import ConfigError, DataError, GraphError
from toolchain.generate.augment import valid_range
from toolchain.generate.checkpoint import load_checkpoint
from toolchain.generate.config import METHODS, OPTIMISING_METHODS, FDDAConfig, GenerationConfig, preset
from toolchain.generate.engine import Engine, bn_distance
from toolchain.generate.fdda import class_centres, round_robin_labels
from toolchain.generate.losses import ClassObjective, deep_weights
from toolchain.generate.teacher import Teacher
from toolchain.onnxio.files import model_sha256
from toolchain.onnxio.graph import image_input
from toolchain.onnxio.preprocessing import Preprocessing


@overload
def generate(model: onnx.ModelProto, pre: Preprocessing, method: str, n: int, config: GenerationConfig | None = None,
             seed: int = 0, real_data: str | Path | None = None, progress: bool = True,
             checkpoint: str | Path | None = None, resume: bool = False,
             distributed: None = None, device: str | torch.device = "cpu",
             acceleration: Acceleration | None = None) -> CalibrationSet: ...


@overload
def generate(model: onnx.ModelProto, pre: Preprocessing, method: str, n: int, config: GenerationConfig | None = None,
             seed: int = 0, real_data: str | Path | None = None, progress: bool = True,
             checkpoint: str | Path | None = None, resume: bool = False,
             distributed: Distributed | None = None, device: str | torch.device = "cpu",
             acceleration: Acceleration | None = None) -> CalibrationSet | None: ...


def generate(model: onnx.ModelProto, pre: Preprocessing, method: str, n: int, config: GenerationConfig | None = None,
             seed: int = 0, real_data: str | Path | None = None, progress: bool = True,
             checkpoint: str | Path | None = None, resume: bool = False,
             distributed: Distributed | None = None, device: str | torch.device = "cpu",
             acceleration: Acceleration | None = None) -> CalibrationSet | None:
    """Synthesise (or sample) `n` calibration inputs for `model` with `method` (see the module docstring).

    Distributed: the full set on rank 0, None on the other ranks. `device`: where the network runs.
    `acceleration`: channels-last / torch.compile of the teacher (None: "auto" for this input size and device).
    """
    started = time.perf_counter()
    rank = distributed.rank if distributed is not None else 0
    if method not in METHODS:
        raise ConfigError(f"unknown generation method {method!r}: choose one of {', '.join(METHODS)}")
    config = config if config is not None else preset("default", method)
    if method == "fdda" and config.fdda is None:  # FDDA's terms on top of another preset's settings
        config = replace(config, fdda=FDDAConfig())
    _check_input(model, pre)
    if method in OPTIMISING_METHODS:
        _require_bn(model, method)  # a problem with the model comes before one with the request
    _check_n(method, n, config)
    manifest: dict[str, Any] = {
        "method": method, "preset": config.name if method in OPTIMISING_METHODS else None, "n": n, "seed": seed,
        "model_sha256": model_sha256(model), "input_shape": [n, pre.num_channels, *pre.input_size],
        "toolchain_version": toolchain.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "world_size": distributed.world_size if distributed is not None else 1,
        "backend": distributed.backend if distributed is not None else None,
    }
    if method in ("gaussian", "real") and rank != 0:
        return None  # nothing to share out: rank 0 samples the set alone
    inputs: np.ndarray | None  # None: a rank other than 0 of a distributed generation (rank 0 writes the set)
    if method == "gaussian":
        inputs, labels = _gaussian(pre, n, seed), None
        manifest.update(config=None, losses={"final": _distance_or_none(model, inputs)})
    elif method == "real":
        inputs, labels = _real(pre, n, seed, real_data, manifest)
        manifest.update(config=None, losses={"final": _distance_or_none(model, inputs)})
    else:
        inputs, labels = _optimise(model, pre, method, n, config, seed, real_data, progress and rank == 0,
                                   Path(checkpoint) if checkpoint is not None else None, resume, distributed, manifest,
                                   torch.device(device), acceleration)
        if inputs is None:
            return None
    manifest["wall_time_s"] = round(time.perf_counter() - started, 3)
    return CalibrationSet(inputs=inputs, labels=labels, manifest=manifest)


def _check_input(model: onnx.ModelProto, pre: Preprocessing) -> None:
    info = image_input(model)
    channels, height, width = info.shape[1:]
    if isinstance(channels, int) and channels != pre.num_channels:
        raise ConfigError(f"the model's input {info.name!r} has {channels} channels but the preprocessing has "
                          f"{pre.num_channels} mean/std values; fix the preprocessing (`toolchain stamp`)")
    if isinstance(height, int) and isinstance(width, int) and (height, width) != tuple(pre.input_size):
        raise ConfigError(f"the model's input {info.name!r} is {height}x{width} but the preprocessing says "
                          f"{pre.input_size[0]}x{pre.input_size[1]}; fix the preprocessing (`toolchain stamp`)")


def _check_n(method: str, n: int, config: GenerationConfig) -> None:
    if n < 1:
        raise ConfigError(f"the number of images must be at least 1, got {n}")
    if method in OPTIMISING_METHODS and n < config.batch_size:
        raise ConfigError(f"n must be >= batch size: asked for {n} images with batch size {config.batch_size}; "
                          f"ask for at least {config.batch_size} images or reduce --batch-size")
    if method in ("dgh", "bns") and config.fdda is not None:
        raise ConfigError(f"the config has FDDA settings but the method is {method!r}; FDDA's class terms need "
                          "labelled real images: use method 'fdda' (or drop the fdda settings)")


_STATISTICS_FREE_NORMS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization")


def _require_bn(model: onnx.ModelProto, method: str) -> None:
    ops = {node.op_type for node in model.graph.node}
    if "BatchNormalization" in ops:
        return
    norms = sorted(ops.intersection(_STATISTICS_FREE_NORMS))
    if norms:
        raise GraphError(
            f"method {method!r} matches BatchNormalization running statistics, but the model normalises with "
            f"{', '.join(norms)}, which keeps none (ConvNeXt, ViT); use --method gaussian, or --method real --data DIR "
            "with a few real images")
    raise GraphError(
        f"method {method!r} matches BatchNormalization statistics but the model has no BatchNormalization nodes: "
        "if BN was folded into the convolutions at export, re-export it with `toolchain export`, which keeps BN; "
        "a model without BN (SqueezeNet) has no statistics to match: use --method gaussian or --method real --data DIR"
    )


def _gaussian(pre: Preprocessing, n: int, seed: int) -> np.ndarray:
    low, high = valid_range(pre)
    x = torch.randn((n, pre.num_channels, *pre.input_size), generator=torch.Generator().manual_seed(seed))
    return torch.maximum(torch.minimum(x, high), low).numpy()


def _real(pre: Preprocessing, n: int, seed: int, real_data: str | Path | None,
          manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:

    if real_data is None:
        raise DataError("method 'real' samples real images: give an image dataset (folder, .tar.gz or .npz) with --data")
    images = open_images(real_data, pre, limit=n, seed=seed)
    if len(images) < n:
        raise DataError(f"{real_data} holds {len(images)} images, fewer than the {n} asked for; ask for fewer or give more images")
    inputs = np.concatenate([batch for batch, _ in images.batches(256)])
    manifest["source"] = str(real_data)
    return inputs, images.labels.copy()


def _distance_or_none(model: onnx.ModelProto, inputs: np.ndarray, batch: int = 256) -> dict[str, float]:
    """bn_distance of a fixed image set, for comparison with generated sets (empty without BN)."""
    if not any(node.op_type == "BatchNormalization" for node in model.graph.node):
        return {}
    teacher = Teacher.from_onnx(model)
    total = torch.zeros(2, teacher.layout.total)
    with torch.no_grad():
        for start in range(0, len(inputs), batch):
            chunk = torch.from_numpy(inputs[start:start + batch])
            out = teacher.run(chunk)
            total += len(chunk) * torch.stack([out.m1, out.m2])
    return {"bn_distance": float(bn_distance(teacher, total / len(inputs)))}


def _num_classes(teacher: Teacher, pre: Preprocessing) -> int:
    with torch.no_grad():
        logits = teacher.module(torch.zeros(1, pre.num_channels, *pre.input_size, device=teacher.device))
    if logits.dim() != 2:
        raise GraphError(f"method 'fdda' needs a classifier with (batch, classes) logits; the model's output has shape {list(logits.shape)}")
    return int(logits.shape[1])


def _optimise(model: onnx.ModelProto, pre: Preprocessing, method: str, n: int, config: GenerationConfig, seed: int,
              real_data: str | Path | None, progress: bool, checkpoint: Path | None, resume: bool,
              distributed: Distributed | None, manifest: dict[str, Any], device: torch.device,
              acceleration: Acceleration | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The optimised images and labels; (None, None) on ranks other than 0 of a distributed run."""
    _require_bn(model, method)
    if resume and checkpoint is None:
        raise ConfigError("resume needs the checkpoint path of the interrupted run (--checkpoint)")
    if acceleration is None:
        acceleration = Acceleration.resolve("auto", "auto", pre.input_size, device)
    teacher = Teacher.from_onnx(model, acceleration).to(device)
    manifest["device"] = str(device)
    manifest["acceleration"] = acceleration.describe()
    labels, classes, deep_start = None, None, 0
    if method == "fdda":
        labels, classes, deep_start = _fdda_setup(teacher, pre, n, config, seed, real_data, manifest)
    engine = Engine(teacher, pre, config, n, seed, labels, classes, deep_start, distributed)
    identity = {"method": method, "model_sha256": manifest["model_sha256"], "n": n, "seed": seed,
                "config": config.without_bookkeeping(), "real_data": str(real_data) if real_data is not None else None,
                "world_size": engine.world_size, "rank": distributed.rank if distributed is not None else 0}
    checkpoint = rank_path(checkpoint, distributed) if checkpoint is not None else None
    if resume:
        assert checkpoint is not None
        engine.load(load_checkpoint(checkpoint, identity))
        manifest["resumed_at_iteration"] = engine.iteration
    else:
        engine.initialise()
    with reuse_freed_memory(acceleration.reuse_memory):
        engine.run(progress, checkpoint, identity, description=f"{method} {n} images")
    final = engine.evaluate()  # collective under distributed: every rank gets the whole set's losses
    images = engine.final_images()
    if distributed is not None and engine.world_size > 1:
        shards = distributed.gather(images)  # contiguous blocks in rank order = global batch order
        if shards is None:
            return None, None
        images = torch.cat(shards)
    rate = engine.session_steps / engine.session_time if engine.session_time > 0 else None
    manifest.update(
        config=config.to_dict(), num_bn_layers=len(teacher.layout.names), batches=engine.sizes,
        border=engine.pipeline.border, plateau_patience=config.optim.resolved_patience(config.iterations),
        losses={"initial": engine.initial_losses, "final": final,
                "curve": [float(f"{v:.6g}") for v in engine.loss_curve]},
        iterations=engine.iteration, optimisation_time_s=round(engine.elapsed, 3),
        image_iterations_per_s=round(rate, 2) if rate else None,
    )
    return images.numpy(), labels.numpy() if labels is not None else None


def _fdda_setup(teacher: Teacher, pre: Preprocessing, n: int, config: GenerationConfig, seed: int,
                real_data: str | Path | None, manifest: dict[str, Any]) -> tuple[torch.Tensor, ClassObjective, int]:

    fdda = config.fdda
    assert fdda is not None  # generate() fills it in for method fdda
    if real_data is None:
        raise DataError(f"method 'fdda' needs labelled real images for its class centres ({fdda.per_class} per class): "
                        "give an image dataset (folder, .tar.gz or .npz) with --data, or use --method dgh")
    num_classes = _num_classes(teacher, pre)
    start = fdda.resolved_deep_start(len(teacher.layout.channels))
    real = open_images(real_data, pre)
    names = pre.class_names or real.class_names
    centres = class_centres(teacher, real, fdda.per_class, num_classes, start, seed, names, str(real_data),
                            present_only=fdda.classes == "present")
    objective = ClassObjective(centres.mean, centres.var, deep_weights(teacher, start), fdda)
    manifest.update(real_data=str(real_data), per_class=fdda.per_class, deep_start=start,
                    num_classes=num_classes, centre_classes=len(centres.classes), centre_images=list(centres.sources))
    return round_robin_labels(n, centres.classes), objective, start
