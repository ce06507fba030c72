"""The toolchain as Python functions: what the CLI calls, and what an MLOps step imports.

Usage:
    from toolchain import api
    result = api.export_model("resnet20_cifar10", out="resnet20.onnx")      # ExportReport
    summary = api.inspect_model("resnet20.onnx")                            # GraphSummary
    api.stamp_model("theirs.onnx", PreprocessingOverrides(mean=(0.5,), std=(0.5,), input_size=(28, 28)))
    metrics = api.evaluate_model("resnet20.onnx", "../shared/datasets/cifar10-test-jpg.tar.gz")
    result = api.run(RunConfig(...))                                        # the whole job: pipeline.RunResult

Every function raises a ToolchainError subclass for problems the user can fix, and writes files
atomically (a failure leaves no partial output).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from toolchain.errors import ConfigError
from toolchain.onnxio.graph import GraphSummary, image_input, summarize
from toolchain.onnxio.files import load_model, save_model
from toolchain.onnxio.validate import check_runs
from toolchain.onnxio.preprocessing import (
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
    exporter: str = "torchscript",
) -> ExportReport:
    """Export a zoo model (or package.module:factory) to ONNX with BN kept, verify it, write it.

    `exporter`: "torchscript" (default) or "dynamo" (torch.onnx's dynamo exporter; needs onnxscript)."""
    import torch

    from toolchain.export.exporter import ExportConfig, export_to_onnx, verify_export
    from toolchain.export.zoo import load_zoo_model

    path = Path(out) if out is not None else Path(f"{model.split(':')[-1]}.onnx")
    check_writable(path, overwrite)
    loaded = load_zoo_model(model, weights)
    pre = resolve_preprocessing(loaded.preprocessing, overrides, source=model)
    example = torch.zeros(1, pre.num_channels, *pre.input_size)
    config = ExportConfig(opset=opset, exporter=exporter)
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
    batch_size: int | None = None,
    threads: int = 2,
    seed: int | None = 0,
    overrides: PreprocessingOverrides = PreprocessingOverrides(),
    progress: bool = True,
    providers: str | tuple[str, ...] | None = None,
    runtime: str = "ort",
):
    """Top-1/top-5 in `runtime` (ort, openvino, qnn) and agreement with `reference` (in onnxruntime):
    an evaluate.EvalResult.

    `providers`: onnxruntime execution providers, e.g. "cuda,cpu" (default: the CPU provider)."""
    from toolchain.evaluate.accuracy import evaluate
    from toolchain.core.execution import provider_names

    chosen = provider_names(providers)
    pre = _checked_preprocessing(model, overrides)
    if reference is not None:
        _check_reference(reference, pre)
    return evaluate(model, data, pre, reference_path=reference, limit=limit, batch_size=batch_size,
                    threads=threads, progress=progress, seed=seed, providers=chosen, runtime=runtime)


def _checked_preprocessing(model: str | Path, overrides: PreprocessingOverrides) -> Preprocessing:
    """The model's preprocessing, once the file passed its checks and runs (the proto is dropped on return:
    onnxruntime opens the file itself, and a large model is not held twice)."""
    proto = load_model(model)
    pre = model_preprocessing(proto, overrides, str(model))
    check_runs(proto, str(model), pre.input_size)
    return pre


def _check_reference(reference: str | Path, pre: Preprocessing) -> None:
    proto = load_model(reference)
    image_input(proto, str(reference))
    check_runs(proto, str(reference), pre.input_size)


def run(config=None, config_name: str = "default", progress: bool = True, resume: bool = False):
    """The whole job from one typed config (pipeline.RunConfig; None: the built-in default run) into one run
    directory: export -> generate -> quantize each entry -> evaluate -> gates -> report. Returns a
    pipeline.RunResult (run_dir, report, failures; exit_code 3 when a gate failed); raises ToolchainError for
    bad input, leaving no run directory behind. `resume=True` continues a stopped run of the same config in
    its run directory (finished stages reused, the interrupted one from its checkpoint).

    Example, an MLOps step:
        from toolchain import api
        from toolchain.pipeline import EvaluateSpec, Gates, QuantizeSpec, RunConfig
        result = api.run(RunConfig(model="model.onnx", calibration="calib.npz", run_dir="runs/nightly",
                                   quantize=(QuantizeSpec(w_bits=4, a_bits=4, reconstruct="pdquant"),),
                                   evaluate=EvaluateSpec(data="val.tar.gz"), gates=Gates(max_drop=0.02)))
        if not result.passed:
            raise SystemExit(result.failures)
    """
    from toolchain.pipeline import RunConfig, run_pipeline

    return run_pipeline(config if config is not None else RunConfig(), config_name, progress, resume)


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


DEFAULT_CALIB_IMAGES = 512


def load_calibration_inputs(calib, proto: onnx.ModelProto, source: str, limit: int | None, seed: int,
                            overrides: PreprocessingOverrides = PreprocessingOverrides()):
    """A CalibrationSet from any form calibforms reads (a calibration .npz, an .npz keyed by the input name, a
    test_data_set_* folder, a CalibrationDataReader: the first `limit` inputs, all when None) or from an image
    dataset (`limit` images, default 512, sampled with `seed`)."""
    from toolchain.data.calibration import sample_calibration
    from toolchain.data.forms import read_calibration_form

    loaded = read_calibration_form(calib, image_input(proto, source).name, source, limit)
    if loaded is not None:
        return loaded
    pre = model_preprocessing(proto, overrides, source)
    return sample_calibration(Path(calib), pre, limit if limit is not None else DEFAULT_CALIB_IMAGES, seed)


def quantize_model(
    model: str | Path,
    calib,
    out: str | Path,
    config=None,
    calib_limit: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    overrides: PreprocessingOverrides = PreprocessingOverrides(),
    progress: bool = True,
    resume: bool = False,
    execution=None,
    distributed=None,
) -> QuantizeOutcome | None:
    """Quantize MODEL with calibration data CALIB; write OUT and OUT's .report.json (both or neither).

    CALIB: a path (calibration .npz, .npz keyed by the input name, test_data_set_* folder of input_*.pb, or an
    image dataset), an onnxruntime CalibrationDataReader, or a float32 numpy array of model inputs (see calibforms).

    With reconstruction, `OUT.ckpt` keeps the finished units while it runs (removed once OUT is written);
    after a divergence, a crash or Ctrl-C, `resume=True` continues from it. `execution` (an
    execution.Execution): device, threads, reconstruction cache budget, onnxruntime providers.
    `distributed` (under torchrun, see datagen.distributed.distributed_session): the ranks share the
    reconstruction; rank 0 writes the files and returns the outcome, the other ranks return None.
    """
    import json

    from toolchain.core.atomic import atomic_output
    from toolchain.quantize.config import QuantConfig
    from toolchain.quantize.driver import check_calibration, quantize

    config = config or QuantConfig()
    out = Path(out)
    if resume and not config.reconstruction.enabled:
        raise ConfigError("--resume continues an interrupted reconstruction: add --reconstruct brecq|pdquant "
                          "(with the options of the interrupted run)")
    checkpoint = out.with_name(out.name + ".ckpt") if config.reconstruction.enabled else None
    report_path = report_path_for(out)
    rank = distributed.rank if distributed is not None else 0
    if distributed is not None and not config.reconstruction.enabled:
        raise ConfigError("torchrun shares the reconstruction between processes: add --reconstruct brecq|pdquant, "
                          "or run one process (calibration alone does not scale out)")
    if rank == 0:
        check_writable(out, overwrite)
        check_writable(report_path, overwrite)
    if execution is not None and config.reconstruction.enabled:
        execution.torch_device()  # a device torch cannot use fails now, not after calibrating
    proto = load_model(model)
    calibration = load_calibration_inputs(calib, proto, str(model), calib_limit, seed, overrides)
    check_calibration(proto, calibration.inputs, str(model))
    check_runs(proto, str(model), sample=calibration.inputs[:1])
    result = quantize(proto, calibration.inputs, config, source=str(model), calib_info=calibration.manifest,
                      progress=progress and rank == 0, checkpoint=checkpoint, resume=resume, consume=True,
                      execution=execution, distributed=distributed)
    if result is None:  # a rank other than 0: rank 0 writes
        distributed.barrier()
        return None
    # The model is written (atomically, with external data when large) inside the report's block: an error in
    # either leaves neither file; only a kill between the two renames could leave the model without its report.
    with atomic_output(report_path) as report_tmp:
        report_tmp.write_text(json.dumps(result.report, indent=1, default=float) + "\n")
        save_model(result.model, out)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    if distributed is not None:
        distributed.barrier()  # the other ranks wait until the files are written
    return QuantizeOutcome(out, report_path, result.report, result.warnings)


@dataclass(frozen=True)
class GenerateOutcome:
    """What `generate_calibration` wrote (None on non-zero ranks of a distributed run)."""

    path: Path | None
    manifest: dict


def default_calibration_path(model: str | Path, method: str, n: int, seed: int) -> Path:
    return Path("calib_data") / f"{Path(model).stem}_{method}{n}_s{seed}.npz"


def generate_calibration(
    model: str | Path,
    method: str,
    n: int,
    out: str | Path | None = None,
    preset_name: str = "default",
    seed: int = 0,
    data: str | Path | None = None,
    batch_size: int | None = None,
    iterations: int | None = None,
    per_class: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    overrides: PreprocessingOverrides = PreprocessingOverrides(),
    progress: bool = True,
    distributed=None,
    config=None,
    execution=None,
    fdda_classes: str | None = None,
) -> GenerateOutcome:
    """Synthesise (or sample) N calibration inputs for MODEL and write them atomically as a calibration .npz.

    `config` (a datagen.GenerationConfig) replaces the preset, for ablations; `batch_size`, `iterations`,
    `per_class` and `fdda_classes` ("all" or "present": FDDAConfig.classes) still override it.

    A checkpoint `OUT.ckpt` is kept while optimising; `resume=True` continues from it, and it is removed
    once the output is written. Under torchrun only rank 0 writes. `execution` (an execution.Execution):
    the device the network runs on and torch's threads.
    """
    from dataclasses import replace

    from toolchain.data.calibration import save_calibration
    from toolchain.generate import generate, preset

    path = Path(out) if out is not None else default_calibration_path(model, method, n, seed)
    rank = distributed.rank if distributed is not None else 0
    checkpoint = path.with_name(path.name + ".ckpt")
    if not resume and rank == 0:
        check_writable(path, overwrite)
    proto = load_model(model)
    pre = model_preprocessing(proto, overrides, str(model))
    check_runs(proto, str(model), pre.input_size)
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
    from toolchain.core.execution import Execution

    execution = execution or Execution()
    execution.apply_threads()
    calib = generate(proto, pre, method, n, config, seed=seed, real_data=data, progress=progress and rank == 0,
                     checkpoint=checkpoint, resume=resume, distributed=distributed, device=execution.torch_device(),
                     acceleration=execution.acceleration(pre.input_size))
    if rank == 0 and calib is not None:
        calib.manifest["model_file"] = str(model)
        save_calibration(path, calib)
    if distributed is not None:
        distributed.barrier()  # every rank keeps its checkpoint until rank 0 has written the output
    checkpoint.unlink(missing_ok=True)
    if rank != 0 or calib is None:
        return GenerateOutcome(None, {})
    return GenerateOutcome(path, calib.manifest)
