"""The toolchain as Python functions: what the CLI calls, and what an MLOps step imports.

Usage:
    from toolchain import api
    result = api.export_model("resnet20_cifar10", out="resnet20.onnx")      # ExportReport
    summary = api.inspect_model("resnet20.onnx")                            # GraphSummary
    api.stamp_model("theirs.onnx", PreprocessingOverrides(mean=(0.5,), std=(0.5,), input_size=(28, 28)))
    metrics = api.evaluate_model("resnet20.onnx", "../shared/datasets/cifar10-test-jpg.tar.gz")

Every function raises a ToolchainError subclass for problems the user can fix, and writes files
atomically (a failure leaves no partial output).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from toolchain.errors import ConfigError
from toolchain.graph import GraphSummary, image_input, summarize
from toolchain.modelio import load_model, save_model
from toolchain.preprocessing import (
    Preprocessing,
    PreprocessingOverrides,
    read_preprocessing,
    resolve_preprocessing,
    write_preprocessing,
)


@dataclass(frozen=True)
class ExportReport:
    """What `export_model` did: where it wrote, how many BN nodes it kept, how it verified."""

    path: Path
    num_batchnorm: int
    num_nodes: int
    opset: int
    max_abs_diff: float
    relative_diff: float
    tolerance: float
    samples: int


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing file unless asked to."""
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; pass --overwrite to replace it or choose another -o")


def export_model(
    model: str,
    out: str | Path | None = None,
    weights: str | Path | None = None,
    overrides: PreprocessingOverrides = PreprocessingOverrides(),
    opset: int = 17,
    overwrite: bool = False,
) -> ExportReport:
    """Export a zoo model (or package.module:factory) to ONNX with BN kept, verify it, write it."""
    import torch

    from toolchain.export import ExportConfig, export_to_onnx, verify_export
    from toolchain.zoo import load_zoo_model

    path = Path(out) if out is not None else Path(f"{model.split(':')[-1]}.onnx")
    check_writable(path, overwrite)
    loaded = load_zoo_model(model, weights)
    pre = resolve_preprocessing(loaded.preprocessing, overrides, source=model)
    example = torch.zeros(1, pre.num_channels, *pre.input_size)
    config = ExportConfig(opset=opset)
    proto = export_to_onnx(loaded.module, example, pre, config, source=model)
    check = verify_export(loaded.module, proto, example, config)
    save_model(proto, path)
    summary = summarize(proto)
    return ExportReport(path, summary.num_batchnorm, sum(summary.ops.values()), summary.opset,
                        check.max_abs_diff, check.relative_diff, check.tolerance, check.samples)


def inspect_model(path: str | Path) -> GraphSummary:
    """Load and summarise an ONNX file."""
    return summarize(load_model(path))


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


def stamp_model(path: str | Path, overrides: PreprocessingOverrides, out: str | Path | None = None) -> Preprocessing:
    """Write preprocessing metadata into a model file (in place unless `out` is given)."""
    proto = load_model(path)
    pre = model_preprocessing(proto, overrides, str(path))
    write_preprocessing(proto, pre)
    save_model(proto, out if out is not None else path)
    return pre


def evaluate_model(
    model: str | Path,
    data: str | Path,
    reference: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 256,
    threads: int = 2,
    seed: int | None = 0,
    overrides: PreprocessingOverrides = PreprocessingOverrides(),
    progress: bool = True,
):
    """Top-1/top-5 in onnxruntime (and agreement with `reference`): an evaluate.EvalResult."""
    from toolchain.evaluate import evaluate

    proto = load_model(model)
    pre = model_preprocessing(proto, overrides, str(model))
    if reference is not None:
        image_input(load_model(reference), str(reference))
    return evaluate(model, data, pre, reference_path=reference, limit=limit, batch_size=batch_size,
                    threads=threads, progress=progress, seed=seed)


def run_default_pipeline(out_dir: Path, progress: bool = True) -> dict:
    """export -> inspect -> evaluate on the built-in digits model; returns (and writes) a summary."""
    import json

    from toolchain.modelio import atomic_output
    from toolchain.zoo import DEFAULT_MODEL, default_eval_data

    model_path = out_dir / f"{DEFAULT_MODEL}.onnx"
    exported = export_model(DEFAULT_MODEL, model_path, overwrite=True)  # the job owns its output folder
    summary = inspect_model(model_path)
    data = default_eval_data()
    result = evaluate_model(model_path, data, progress=progress)
    log = [
        f"export   {model_path}: {exported.num_batchnorm} BatchNormalization kept, onnxruntime vs PyTorch "
        f"max|diff|/max|ref| {exported.relative_diff:.1e} (<= {exported.tolerance:.0e})",
        f"inspect  {summary.num_batchnorm} BN layers, {len(summary.quantizable)} quantizable layers, "
        + ", ".join(f"{op} {n}" for op, n in summary.ops.items()),
        f"evaluate top-1 {result.top1:.4f} on {result.n} held-out digits ({result.images_per_second:.0f} images/s)",
    ]
    record = {"model": str(model_path), "export": {"num_batchnorm": exported.num_batchnorm, "relative_diff": exported.relative_diff},
              "inspect": {"ops": summary.ops, "num_batchnorm": summary.num_batchnorm},
              "evaluate": result.to_dict(), "log": log}
    with atomic_output(out_dir / "run.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return record


@dataclass(frozen=True)
class QuantizeOutcome:
    """What `quantize_model` wrote: the QDQ model, its report (also returned as a dict), and warnings."""

    path: Path
    report_path: Path
    report: dict
    warnings: tuple[str, ...]


def report_path_for(model_path: Path) -> Path:
    """DIR/NAME.onnx -> DIR/NAME.report.json."""
    return model_path.with_name(f"{model_path.stem}.report.json")


def load_calibration_inputs(calib: str | Path, proto: onnx.ModelProto, source: str, limit: int, seed: int,
                            overrides: PreprocessingOverrides = PreprocessingOverrides()):
    """A CalibrationSet from a calibration .npz (`inputs`) or an image dataset (sampled: limit, seed)."""
    import numpy as np

    from toolchain.calibdata import CalibrationSet, load_calibration, sample_calibration
    from toolchain.errors import DataError

    path = Path(calib)
    if not path.exists():
        raise DataError(f"calibration data {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            is_calibration = "inputs" in data.files
        if is_calibration:
            loaded = load_calibration(path)
            inputs = loaded.inputs[:limit] if limit else loaded.inputs
            return CalibrationSet(inputs, loaded.labels, {**loaded.manifest, "file": str(path), "n": int(len(inputs))})
    pre = model_preprocessing(proto, overrides, source)
    return sample_calibration(path, pre, limit, seed)


def quantize_model(
    model: str | Path,
    calib: str | Path,
    out: str | Path,
    config=None,
    calib_limit: int = 512,
    seed: int = 0,
    overwrite: bool = False,
    overrides: PreprocessingOverrides = PreprocessingOverrides(),
    progress: bool = True,
) -> QuantizeOutcome:
    """Quantize MODEL with calibration data CALIB; write OUT and OUT's .report.json (both or neither)."""
    import json

    from toolchain.modelio import atomic_output
    from toolchain.quant.config import QuantConfig
    from toolchain.quant.quantize import quantize

    config = config or QuantConfig()
    out = Path(out)
    report_path = report_path_for(out)
    check_writable(out, overwrite)
    check_writable(report_path, overwrite)
    proto = load_model(model)
    calibration = load_calibration_inputs(calib, proto, str(model), calib_limit, seed, overrides)
    result = quantize(proto, calibration.inputs, config, source=str(model), calib_info=calibration.manifest, progress=progress)
    # Written side by side, renamed into place only when both are complete.
    with atomic_output(out) as model_tmp, atomic_output(report_path) as report_tmp:
        model_tmp.write_bytes(result.model.SerializeToString())
        report_tmp.write_text(json.dumps(result.report, indent=1, default=float) + "\n")
    return QuantizeOutcome(out, report_path, result.report, result.warnings)
