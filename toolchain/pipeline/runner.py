"""`toolchain run`'s stages: model -> calibration set -> quantize each entry -> evaluate -> gates -> report.

Usage:
    result = run_pipeline(RunConfig(), config_name="default")     # RunResult: run_dir, report, passed, failures
    result.exit_code                                              # 0, or 3 when a gate failed

    result = run_pipeline(config, resume=True)                    # go on with a stopped run of the same config

Everything goes into one run directory (pipeline.rundir): the FP32 model (when exported), calibration.npz,
NAME.onnx and NAME.report.json per quantized model, config.resolved.yaml, report.json, report.md, the plots
and run.log. Paths inside report.json are relative to the run directory, so a run directory can be moved.
A failure other than a gate removes the run directory again; a failed gate keeps it (its report says why).
A stopped run (Ctrl-C, a kill) keeps it with run.state.json (pipeline.state): `resume` reuses its finished
stages and continues the stage that was running from that stage's checkpoint.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from toolchain.data.calibration import CalibrationSet, sample_calibration, save_calibration
from toolchain.data.forms import first_inputs, load_calibration_inputs, read_calibration_form
from toolchain.data.images import open_images
from toolchain.errors import EXIT_GATE, EXIT_OK
from toolchain.evaluate.accuracy import EvalResult, evaluate
from toolchain.export.outputs import export_to_file
from toolchain.export.zoo import zoo_input_size
from toolchain.generate.outputs import generate_to_file
from toolchain.onnxio.graph import image_input, summarize
from toolchain.onnxio.loaded import LoadedModel, open_model
from toolchain.onnxio.validate import check_runs
from toolchain.pipeline.config import QuantizeSpec, RunConfig
from toolchain.pipeline.config_io import config_hash, resolved_yaml
from toolchain.pipeline.measure import batch1_latency_ms, parameter_bytes
from toolchain.pipeline.provenance import provenance
from toolchain.pipeline.report import write_reports
from toolchain.pipeline.run_report import (
    Accuracy,
    CalibrationSection,
    Evaluation,
    ExportCheck,
    Latency,
    ModelAccuracy,
    ModelEntry,
    ModelSection,
    ModelSize,
    RunGates,
    RunReport,
    Timing,
    gate_result,
    model_entry,
)
from toolchain.pipeline.rundir import RUN_MARKER, check_resumable, run_directory, run_log
from toolchain.pipeline.state import RunState

CALIBRATION_FILE = "calibration.npz"


@dataclass(frozen=True)
class RunResult:
    """What a run wrote and whether its gates passed."""

    run_dir: Path
    report: dict  # report.json's content (what users' scripts read)
    failures: tuple[str, ...]
    run_report: RunReport  # the same, typed

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_GATE


def default_run_dir(config_name: str) -> Path:
    return Path("runs") / config_name


def resolve(config: RunConfig, config_name: str) -> RunConfig:
    """`config` with what is decided at run time written in: the run directory, each reduce_range, and the
    budgets that follow the model's input size."""
    run_dir = config.run_dir or str(default_run_dir(config_name))
    config = config.sized(_input_pixels(config.model))
    specs = tuple(replace(spec, reduce_range=spec.resolved_reduce_range()) for spec in config.quantize)
    return replace(config, run_dir=run_dir, quantize=specs)


def _input_pixels(model: str) -> int | None:
    """H x W of the model's image input: from the zoo or the .onnx file's input shape (None when unknown)."""
    if model.endswith(".onnx"):
        try:
            shape = image_input(onnx.load(model, load_external_data=False)).shape
        except Exception:  # noqa: BLE001 - protobuf, onnx and OS errors alike: the model stage reports the file itself
            return None
        return shape[2] * shape[3] if isinstance(shape[2], int) and isinstance(shape[3], int) else None
    size = zoo_input_size(model)
    return size[0] * size[1] if size is not None else None


def run_pipeline(config: RunConfig, config_name: str = "default", progress: bool = True,
                 resume: bool = False) -> RunResult:
    """Run every stage of `config` into its run directory (see the module docstring)."""
    config.validate()
    config = resolve(config, config_name)
    assert config.run_dir is not None, "resolve() sets the run directory"
    folder = Path(config.run_dir)
    started = time.perf_counter()
    digest = config_hash(config)
    if resume:
        check_resumable(folder, config.overwrite)
        state = RunState.resume(folder, digest)  # before run_directory: a mismatch must not touch the folder
    with run_directory(folder, config.overwrite, resume=resume), run_log(folder / "run.log") as log:
        if resume:
            log.info("run %s: resuming (config hash %s); finished before: %s", folder, digest[:12],
                     ", ".join(state.stages) or "nothing")
        else:
            (folder / RUN_MARKER).write_text(resolved_yaml(config), encoding="utf-8")
            state = RunState.start(folder, digest)
            log.info("run %s: config hash %s, resolved config in %s", folder, digest[:12], folder / RUN_MARKER)
        stages = _Stages(config, folder, log, progress, state)
        report = stages.run()
        report = replace(report, timing=replace(report.timing, total_s=round(time.perf_counter() - started, 2)))
        report = write_reports(report, folder, stages.images_for_plots())
        for failure in report.gates.failures:
            log.warning("gate failed: %s", failure)
        log.info("report %s (%.1f s in all)", folder / "report.md", report.timing.total_s)
    return RunResult(folder, report.to_dict(), tuple(report.gates.failures), report)


class _Stages:
    """The stages of one run, sharing the run's config, folder and logger."""

    def __init__(self, config: RunConfig, folder: Path, log: Any, progress: bool, state: RunState) -> None:
        self.config, self.folder, self.log, self.progress, self.state = config, folder, log, progress, state
        self.execution = config.execution.execution()
        self.timing: dict[str, float] = {}
        self.model: LoadedModel | None = None  # the FP32 model, opened once (read, checked, run) for every stage
        self.calibration: CalibrationSet | None = None  # read back once for every quantize entry
        self.checked_limits: set[int | None] = set()  # the calib_limit values whose first inputs passed the checks

    def _timed(self, stage: str, started: float) -> None:
        self.timing[stage] = round(self.timing.get(stage, 0.0) + time.perf_counter() - started, 2)

    def run(self) -> RunReport:
        config = self.config
        seeds = {"generate": config.generate.seed, "evaluate": config.evaluate.seed,
                 "quantize": {s.label: s.seed for s in config.quantize}}
        model = self.open_fp32()
        calibration = self.calibrate()
        data = config.evaluation_data()
        fp32 = self.evaluate_fp32(data) if data is not None else None
        evaluation = (Evaluation("built-in digits test split" if config.evaluate.data is None else data,
                                 config.evaluate.runtime, fp32.n, Accuracy(fp32.top1, fp32.top5))
                      if fp32 is not None and data is not None else None)  # FP32 is evaluated only with data
        models, timing = self.latency([self.quantize(spec, data, fp32) for spec in config.quantize])
        failures = [f for m in models if m.gates is not None for f in m.gates.failures]
        # the stage times are this session's; after --resume the reused stages ran in an earlier one
        resumed = {"reused_stages": list(self.state.reused)} if self.state.resumed else None
        return RunReport(provenance(), config_hash(config), RUN_MARKER, seeds, model, calibration, evaluation, models,
                         timing, RunGates(not failures, failures), resumed)

    # ---------------------------------------------------------------------------------------------- stages

    @property
    def loaded(self) -> LoadedModel:
        assert self.model is not None, "the model stage runs first"
        return self.model

    @property
    def model_path(self) -> Path:
        return self.loaded.path

    @property
    def pre(self) -> Any:
        return self.loaded.preprocessing

    def open_fp32(self) -> ModelSection:
        config, started = self.config, time.perf_counter()
        done = self.state.finished("model")
        if done is not None:
            path = self.folder / done["file"] if not Path(done["file"]).is_absolute() else Path(done["file"])
            if path.is_file() and _sha256(path) == done["sha256"]:
                self.model = open_model(path, config.preprocessing)
                self.log.info("model    %s: finished in an earlier session", path)
                return ModelSection.from_dict(self.state.reuse("model"))
        if config.model_is_file:
            path = Path(config.model)
            exported = None
        else:
            path = self.folder / f"{config.model.split(':')[-1].replace('.', '_')}.onnx"
            exported = export_to_file(config.model, path, config.export.weights, config.preprocessing,
                                      config.export.opset, exporter=config.export.exporter)
        self.model = open_model(path, config.preprocessing)
        summary = summarize(self.loaded.proto)
        self._timed("export" if exported else "inspect", started)
        where = (f"exported with {exported.num_batchnorm} BatchNormalization kept, onnxruntime vs PyTorch "
                 f"max|diff|/max|ref| {exported.relative_diff:.1e}" if exported else "given as a file")
        self.log.info("model    %s: %s; %d BN layers, %d quantizable layers", path, where, summary.num_batchnorm,
                      len(summary.quantizable))
        entry = ModelSection(config.model, self._relative(path), _sha256(path), summary.num_batchnorm,
                             len(summary.quantizable), summary.ops, [1, self.pre.num_channels, *self.pre.input_size],
                             ExportCheck(exported.relative_diff, exported.tolerance) if exported else None)
        self.state.finish("model", entry.to_dict())
        return entry

    def calibrate(self) -> CalibrationSection:
        config, out, started = self.config, self.folder / CALIBRATION_FILE, time.perf_counter()
        gen = config.generate
        assert gen.n is not None and gen.preset is not None, "resolve() sized the generation"
        done = self.state.finished("calibration")
        if done is not None and out.is_file():
            self.log.info("calibrate %s: finished in an earlier session", out)
            return CalibrationSection.from_dict(self.state.reuse("calibration"))
        if config.calibration is not None:
            source = self.loaded.source
            calib = read_calibration_form(config.calibration, image_input(self.loaded.proto, source).name, source)
            if calib is None:  # an image dataset: generate.n images drawn with generate.seed
                assert isinstance(config.calibration, str), "a reader always yields its inputs"
                calib = sample_calibration(Path(config.calibration), self.pre, gen.n, gen.seed)
            save_calibration(out, calib)
            manifest = calib.manifest
            what = f"{len(calib)} inputs from {config.calibration if isinstance(config.calibration, str) else 'a reader'}"
        else:
            checkpoint = out.with_name(out.name + ".ckpt")  # generate_calibration's, kept by a stopped session
            outcome = generate_to_file(self.loaded, gen.method, gen.n, out, gen.preset, gen.seed, gen.data,
                                       gen.batch_size, gen.iterations, gen.per_class,
                                       resume=self.state.resumed and checkpoint.is_file(), progress=self.progress,
                                       execution=self.execution, fdda_classes=gen.fdda_classes)
            manifest = outcome.manifest
            what = f"{gen.n} images by {gen.method.upper()} (preset {gen.preset}, seed {gen.seed})"
        self._timed("calibration", started)
        self.log.info("calibrate %s: %s", out, what)
        losses = manifest.get("losses") or {}
        entry = CalibrationSection(CALIBRATION_FILE, manifest.get("method"), manifest.get("n", gen.n), manifest.get("form"),
                                   manifest.get("source") or manifest.get("file"), manifest.get("preset"),
                                   manifest.get("seed"), {k: losses[k] for k in ("initial", "final") if k in losses},
                                   losses.get("curve", []))
        self.state.finish("calibration", entry.to_dict())
        return entry

    def evaluate_fp32(self, data: str) -> EvalResult:
        done = self.state.finished("fp32")
        if done is not None:
            return EvalResult(**self.state.reuse("fp32"))
        started = time.perf_counter()
        evaluation = self.config.evaluate
        result = evaluate(self.model_path, data, self.pre, limit=evaluation.limit, batch_size=evaluation.batch_size,
                          threads=self.execution.thread_count, progress=self.progress, seed=evaluation.seed,
                          providers=self.execution.providers)
        self._timed("evaluate", started)
        self.log.info("evaluate FP32 top-1 %.4f on %d images", result.top1, result.n)
        self.state.finish("fp32", result.to_dict())
        return result

    def calibration_inputs(self, spec: QuantizeSpec) -> CalibrationSet:
        """The run's calibration set, read back from its file once; an entry's calib_limit takes its first inputs,
        as reading the file with that limit would. Each limit's inputs are checked against the model once, and the
        model runs once on the first input (the same for every limit)."""
        # start-up time: the quantizer loads when a run quantizes (the pipeline package loads with the CLI)
        from toolchain.quantize.driver import check_calibration  # deferred: onnxruntime loads only when this runs (start-up time)

        model = self.loaded
        if self.calibration is None:
            self.calibration = load_calibration_inputs(self.folder / CALIBRATION_FILE, model.proto, model.source, None,
                                                       spec.seed, self.config.preprocessing)
        calibration = first_inputs(self.calibration, spec.calib_limit)
        if spec.calib_limit not in self.checked_limits:
            check_calibration(model.proto, calibration.inputs, model.source)
            if not self.checked_limits:
                check_runs(model.proto, model.source, sample=calibration.inputs[:1])
            self.checked_limits.add(spec.calib_limit)
        return calibration

    def quantize(self, spec: QuantizeSpec, data: str | None, fp32: EvalResult | None) -> ModelEntry:
        # start-up time: the quantizer loads when a run quantizes (the pipeline package loads with the CLI)
        from toolchain.quantize.outputs import quantize_to_files  # deferred: onnxruntime loads only when this runs (start-up time)

        config, out, started = self.config, self.folder / f"{spec.label}.onnx", time.perf_counter()
        done = self.state.finished(f"quantize:{spec.label}")
        if done is not None and out.is_file():
            self.log.info("quantize %s %s: finished in an earlier session", spec.label, out)
            return ModelEntry.from_dict(self.state.reuse(f"quantize:{spec.label}"))
        quant_config = spec.quant_config()
        checkpoint = out.with_name(out.name + ".ckpt")  # quantize_model's reconstruction checkpoint
        resume = self.state.resumed and quant_config.reconstruction.enabled and checkpoint.is_file()
        if quant_config.reconstruction.enabled:
            self.execution.torch_device()  # a device torch cannot use fails now, not after calibrating
        outcome = quantize_to_files(self.loaded.copy(), self.calibration_inputs(spec), out, quant_config,
                                    self.loaded.source, progress=self.progress, resume=resume, execution=self.execution)
        assert outcome is not None, "one process: this rank writes the outcome"
        self._timed("quantize", started)
        for warning in outcome.warnings:
            self.log.warning("%s: %s", spec.label, warning)
        entry = model_entry(spec.label, spec.w_bits, spec.a_bits, spec.reconstruct, spec.preset, spec.target,
                            quant_config.reduce_range, outcome.typed, self._relative(out),
                            self._relative(outcome.report_path))
        size = ModelSize(**parameter_bytes(outcome.model, outcome.typed), file_bytes=out.stat().st_size)
        accuracy = None
        if fp32 is not None:
            assert data is not None, "an FP32 evaluation ran, so the run has evaluation data"
            started = time.perf_counter()
            evaluation = config.evaluate
            metrics = evaluate(out, data, self.pre, reference_path=self.model_path, limit=evaluation.limit,
                               batch_size=evaluation.batch_size, threads=self.execution.thread_count,
                               progress=self.progress, seed=evaluation.seed, providers=self.execution.providers,
                               runtime=evaluation.runtime)
            self._timed("evaluate", started)
            assert metrics.agreement is not None, "evaluated with the FP32 model as reference"
            accuracy = ModelAccuracy(metrics.top1, metrics.top5, metrics.agreement, round(fp32.top1 - metrics.top1, 6))
        gates = gate_result(spec.label, config.gates.merged(spec.gates).given(), accuracy)
        entry = replace(entry, size=size, accuracy=accuracy, gates=gates)
        measured = (f"top-1 {accuracy.top1:.4f} (FP32 {fp32.top1:.4f}, agreement {accuracy.agreement:.4f}), "
                    if accuracy is not None and fp32 is not None else "")
        self.log.info("quantize %s %s: %sinteger coverage %.2f of ops, %s bytes of parameters (FP32 %s)", spec.label, out,
                      measured, entry.coverage.ops, f"{size.bytes:,}", f"{size.fp32:,}")
        self.state.finish(f"quantize:{spec.label}", entry.to_dict())
        return entry

    def latency(self, models: list[ModelEntry]) -> tuple[list[ModelEntry], Timing]:
        """Batch-1 latency of FP32 and every quantized model in onnxruntime, timed in alternating rounds: the models
        with their latency, and the run's timing (stage seconds of this session, the latency settings)."""

        runs = self.config.evaluate.latency_runs
        if runs == 0:
            return models, Timing(dict(self.timing))
        started = time.perf_counter()
        paths = [self.model_path, *(self.folder / m.file for m in models)]
        shape = [1, self.pre.num_channels, *self.pre.input_size]
        ms = batch1_latency_ms(paths, shape, runs, self.execution.thread_count)
        self._timed("latency", started)
        timed = [replace(model, timing=Latency(round(value, 4), round(value / ms[0], 3)))
                 for model, value in zip(models, ms[1:])]
        return timed, Timing(dict(self.timing), round(ms[0], 4), runs, self.execution.thread_count)

    # ---------------------------------------------------------------------------------------------- helpers

    def images_for_plots(self) -> dict:
        """Synthesised (calibration) and real images for the report's grid, as model inputs, with their preprocessing."""


        with np.load(self.folder / CALIBRATION_FILE) as calibration:  # closes the archive (np.load keeps it open)
            inputs = calibration["inputs"][:16]
        real_source = self.config.generate.data or self.config.evaluation_data()
        real = None
        if real_source is not None:
            images = open_images(real_source, self.pre, limit=16, seed=0)
            real = next(iter(images.batches(16)))[0] if len(images) else None
        return {"synthetic": inputs, "real": real, "preprocessing": self.pre,
                "synthetic_label": "calibration inputs" if self.config.calibration is not None
                else f"{self.config.generate.method.upper()} (synthesised)"}

    def _relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.folder))
        except ValueError:
            return str(path.resolve())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
