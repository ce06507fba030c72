"""Stage 2 to a file: N calibration inputs synthesised (or sampled) for an opened model, written as a calibration .npz.

Usage:
    model = open_model("resnet20.onnx")
    outcome = generate_to_file(model, "dgh", 256, Path("calib_data/dgh256.npz"))   # GenerateOutcome(path, manifest)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from toolchain.core.execution import Execution
from toolchain.data.calibration import save_calibration
from toolchain.generate.config import preset
from toolchain.onnxio.loaded import LoadedModel


@dataclass(frozen=True)
class GenerateOutcome:
    """What `generate_to_file` wrote (path None on non-zero ranks of a distributed run)."""

    path: Path | None
    manifest: dict


def default_calibration_path(model: str | Path, method: str, n: int, seed: int) -> Path:
    return Path("calib_data") / f"{Path(model).stem}_{method}{n}_s{seed}.npz"


def generate_to_file(model: LoadedModel, method: str, n: int, path: Path, preset_name: str = "default", seed: int = 0,
                     data: str | Path | None = None, batch_size: int | None = None, iterations: int | None = None,
                     per_class: int | None = None, resume: bool = False, progress: bool = True, distributed=None,
                     config=None, execution: Execution | None = None,
                     fdda_classes: str | None = None) -> GenerateOutcome:
    """Synthesise `n` inputs for `model` and write them to `path` atomically (rank 0 only under torchrun).

    `config` (a generate.GenerationConfig) replaces the preset, for ablations; `batch_size`, `iterations`,
    `per_class` and `fdda_classes` ("all" or "present": FDDAConfig.classes) still override it. A checkpoint
    `path.ckpt` is kept while optimising; `resume=True` continues from it; it is removed once `path` is written.
    """
    # start-up time: the generation package imports torch; api imports this module for every command
    from toolchain.generate.generate import generate  # deferred: torch loads only when this runs (start-up time)

    rank = distributed.rank if distributed is not None else 0
    checkpoint = path.with_name(path.name + ".ckpt")
    config = config if config is not None else preset(preset_name, method)
    changes = {k: v for k, v in (("batch_size", batch_size), ("iterations", iterations)) if v is not None}
    if changes:
        config = replace(config, **changes)
    if per_class is not None and config.fdda is not None:
        config = replace(config, fdda=replace(config.fdda, per_class=per_class))
    if fdda_classes is not None and config.fdda is not None:
        config = replace(config, fdda=replace(config.fdda, classes=fdda_classes))
    if distributed is not None:
        checkpoint = checkpoint.with_name(f"{checkpoint.name}.rank{rank}")
    execution = execution or Execution()
    execution.apply_threads()
    pre = model.preprocessing
    calib = generate(model.proto, pre, method, n, config, seed=seed, real_data=data, progress=progress and rank == 0,
                     checkpoint=checkpoint, resume=resume, distributed=distributed, device=execution.torch_device(),
                     acceleration=execution.acceleration(pre.input_size))
    if rank == 0 and calib is not None:
        calib.manifest["model_file"] = model.source
        save_calibration(path, calib)
    if distributed is not None:
        distributed.barrier()  # every rank keeps its checkpoint until rank 0 has written the output
    checkpoint.unlink(missing_ok=True)
    if rank != 0 or calib is None:
        return GenerateOutcome(None, {})
    return GenerateOutcome(path, calib.manifest)
