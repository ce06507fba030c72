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

from pathlib import Path
from typing import TYPE_CHECKING

from toolchain.core.atomic import check_writable
from toolchain.core.execution import provider_names
from toolchain.data.forms import DEFAULT_CALIB_IMAGES, load_calibration_inputs
from toolchain.errors import ConfigError
from toolchain.evaluate.accuracy import evaluate
from toolchain.export.outputs import ExportReport, export_to_file
from toolchain.generate.outputs import GenerateOutcome, default_calibration_path, generate_to_file
from toolchain.onnxio.files import load_model, save_model
from toolchain.onnxio.graph import GraphSummary, image_input, summarize
from toolchain.onnxio.loaded import model_preprocessing, open_model
from toolchain.onnxio.preprocessing import Preprocessing, PreprocessingOverrides, write_preprocessing
from toolchain.onnxio.validate import check_runs
from toolchain.quantize.config import QuantConfig

if TYPE_CHECKING:
    from toolchain.quantize.outputs import QuantizeOutcome

# Re-exported: the names an MLOps step imports from here (the stage modules define them).
__all__ = ["DEFAULT_CALIB_IMAGES", "ExportReport", "GenerateOutcome", "check_writable",
           "default_calibration_path", "evaluate_model", "export_model", "generate_calibration", "inspect_model",
           "load_calibration_inputs", "model_preprocessing", "quantize_model", "run", "stamp_model"]


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
    path = Path(out) if out is not None else Path(f"{model.split(':')[-1]}.onnx")
    check_writable(path, overwrite)
    return export_to_file(model, path, weights, overrides, opset, exporter)


def inspect_model(path: str | Path) -> GraphSummary:
    """Load and summarise an ONNX file."""
    return summarize(load_model(path))


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

    chosen = provider_names(providers)
    # the proto is dropped on return: onnxruntime opens the file itself, and a large model is not held twice
    pre = open_model(model, overrides).preprocessing
    if reference is not None:
        _check_reference(reference, pre)
    return evaluate(model, data, pre, reference_path=reference, limit=limit, batch_size=batch_size,
                    threads=threads, progress=progress, seed=seed, providers=chosen, runtime=runtime)


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
    from toolchain.pipeline import RunConfig, run_pipeline  # deferred: torch loads only when this runs (start-up time)

    return run_pipeline(config if config is not None else RunConfig(), config_name, progress, resume)


def __getattr__(name: str):
    # start-up time: QuantizeOutcome and report_path_for live with the quantizer (numpy, onnx checker); they load on
    # first use, as the quantizer itself does in quantize_model.
    if name in ("QuantizeOutcome", "report_path_for"):
        from toolchain.quantize import outputs  # deferred: onnxruntime loads only when this runs (start-up time)

        return getattr(outputs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    image dataset), an onnxruntime CalibrationDataReader, or a float32 numpy array of model inputs (see data.forms).

    With reconstruction, `OUT.ckpt` keeps the finished units while it runs (removed once OUT is written);
    after a divergence, a crash or Ctrl-C, `resume=True` continues from it. `execution` (an
    execution.Execution): device, threads, reconstruction cache budget, onnxruntime providers.
    `distributed` (under torchrun, see core.distributed.distributed_session): the ranks share the
    reconstruction; rank 0 writes the files and returns the outcome, the other ranks return None.
    """
    # start-up time: the quantizer (onnxruntime, its passes) loads when a model is quantized, not with every command
    from toolchain.quantize.outputs import check_quantize_inputs, quantize_to_files, report_path_for

    config = config or QuantConfig()
    out = Path(out)
    if resume and not config.reconstruction.enabled:
        raise ConfigError("--resume continues an interrupted reconstruction: add --reconstruct brecq|pdquant "
                          "(with the options of the interrupted run)")
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
    check_quantize_inputs(proto, calibration.inputs, str(model))
    return quantize_to_files(proto, calibration, out, config, str(model), progress=progress and rank == 0,
                             resume=resume, execution=execution, distributed=distributed)


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
    path = Path(out) if out is not None else default_calibration_path(model, method, n, seed)
    rank = distributed.rank if distributed is not None else 0
    if not resume and rank == 0:
        check_writable(path, overwrite)
    return generate_to_file(open_model(model, overrides), method, n, path, preset_name, seed, data, batch_size,
                            iterations, per_class, resume, progress, distributed, config, execution, fdda_classes)
