"""What `toolchain run` does, as one typed config: the stage commands' options, one key each.

Usage:
    config = RunConfig()                                                   # the built-in default run
    config = RunConfig(model="resnet20.onnx", calibration="calib.npz",
                       quantize=(QuantizeSpec(w_bits=4, a_bits=4, reconstruct="pdquant"),),
                       evaluate=EvaluateSpec(data="test.tar.gz"), gates=Gates(max_drop=0.02))
    config.validate()                                                      # ConfigError naming the key

A key is named after the stage command's option (`--w-bits` -> `w_bits`, `--no-qdrop` -> `no_qdrop`), so a
stage command line translates into a config file one to one. The file form (YAML or JSON) and the
command-line overrides are in pipeline.config_io.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from toolchain.core.cpu import has_vnni
from toolchain.core.execution import Execution, provider_names
from toolchain.errors import ConfigError
from toolchain.export.zoo import DEFAULT_MODEL, default_eval_data
from toolchain.generate.config import METHODS, PRESETS
from toolchain.onnxio.preprocessing import PreprocessingOverrides
from toolchain.quantize.config import ActivationBudget, BitBudget, QuantConfig
from toolchain.quantize.reconstruct import ReconConfig
from toolchain.quantize.reconstruct.cache import parse_bytes

CONFIG_VERSION = 1
# Measured on ResNet-20 W?A4 (bench/results/mixed_precision.md, 3 seeds): with 3-bit candidates the allocation
# scores 74.86 at 2.5 bits and 76.49 at 3.0, without them 71.62 and 73.19.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@runtime_checkable
class CalibrationReader(Protocol):
    """onnxruntime.quantization.CalibrationDataReader's protocol: {input name: array} per call, None at the end."""

    def get_next(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class ExportSpec:
    """`toolchain export`'s options (used when `model` is a zoo name or package.module:factory)."""

    weights: str | None = None
    opset: int = 17
    exporter: str = "torchscript"


# Inputs of at least this many pixels make a model "ImageNet-size": its run defaults to the budgets that finish
# on a few CPU cores (generate 64 images with the cpu preset, reconstruction with the cpu preset; see sized()).
LARGE_INPUT_PIXELS = 128 * 128


@dataclass(frozen=True)
class GenerateSpec:
    """`toolchain generate`'s options: how the calibration set is made when no `calibration` is given.
    n and preset [default: 128 images, preset default; 64 images, preset cpu for ImageNet-size inputs]."""

    method: str = "dgh"
    n: int | None = None
    preset: str | None = None
    seed: int = 0
    data: str | None = None
    per_class: int | None = None
    fdda_classes: str | None = None
    batch_size: int | None = None
    iterations: int | None = None


@dataclass(frozen=True)
class Gates:
    """Accuracy gates on every quantized model (fractions: 0.01 = 1 point); None = no gate.

    min_top1: top-1 at least this; max_drop: FP32 top-1 minus the model's at most this; min_agreement: the
    fraction of images whose top-1 class equals FP32's at least this."""

    min_top1: float | None = None
    max_drop: float | None = None
    min_agreement: float | None = None

    def given(self) -> dict[str, float]:
        return {k: v for k, v in (("min_top1", self.min_top1), ("max_drop", self.max_drop),
                                  ("min_agreement", self.min_agreement)) if v is not None}

    def merged(self, override: Gates | None) -> Gates:
        """These gates with `override`'s given values in their place."""
        return replace(self, **override.given()) if override is not None else self


@dataclass(frozen=True)
class QuantizeSpec:
    """`toolchain quantize`'s options for one quantized model of the run.

    name: the model's file stem in the run directory [default: W{w_bits}A{a_bits}, plus -RECONSTRUCT].
    reduce_range: True, False or "auto" (True when the target is ort-x86, the weights have 8 bits and this
    CPU has no VNNI: `run` evaluates the model here, where full-range weights would saturate).
    weight_bits_budget / size_budget (e.g. "120KB"): mixed precision, each layer's weight bits chosen from
    w_bits_choices [default: the target's among 2, 3, 4, 8] so the weights fit (quantize.mixed_precision);
    sensitivity_rounding: "nearest" or "compensated" [default: BitBudget's] for the sensitivity measurement.
    a_bits_budget: mixed precision of activations, each tensor's bits chosen from a_bits_choices [default: 4, 8]
    so that their mean over all activation values is at most this (ActivationBudget).
    weight_rounding: "gptq" or "nearest" [default: QuantConfig's: gptq; with reconstruction AdaRound's own start,
    or GPTQ's integers with "gptq"].
    gates: this model's own gates, in place of the run's where given."""

    name: str | None = None
    w_bits: int = 8
    a_bits: int = 8
    calibrator: str | None = None
    percentile: float = 99.99
    target: str = "ort-x86"
    batch: int | None = None
    first_last_8bit: bool = False
    low_bit_storage: str = "ort"
    reduce_range: bool | str = "auto"
    weight_rounding: str | None = None
    calib_limit: int | None = None
    seed: int = 0
    reconstruct: str = "none"
    preset: str | None = None  # default: "default", "cpu" for ImageNet-size inputs (RunConfig.sized)
    recon_iterations: int | None = None
    recon_batch_size: int | None = None
    pd_weight: float | None = None
    no_qdrop: bool = False
    no_pd: bool = False
    no_dc: bool = False
    no_learn_scales: bool = False
    require_all_quantized: bool = False
    require_full_integer: bool = False
    weight_bits_budget: float | None = None
    size_budget: str | None = None
    w_bits_choices: tuple[int, ...] | None = None
    sensitivity_rounding: str | None = None
    a_bits_budget: float | None = None
    a_bits_choices: tuple[int, ...] | None = None
    gates: Gates | None = None

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
        weights = (f"W{self.weight_bits_budget:g}mix" if self.weight_bits_budget is not None
                   else f"W{self.size_budget}mix" if self.size_budget is not None else f"W{self.w_bits}")
        activations = f"A{self.a_bits_budget:g}mix" if self.a_bits_budget is not None else f"A{self.a_bits}"
        return f"{weights}{activations}" + (f"-{self.reconstruct}" if self.reconstruct != "none" else "")

    def act_budget(self):
        """The ActivationBudget these options describe (None without an activation budget)."""

        if self.a_bits_budget is None:
            if self.a_bits_choices is not None:
                raise ConfigError("--a-bits-choices applies to mixed precision of activations: add --a-bits-budget")
            return None
        choices = tuple(self.a_bits_choices) if self.a_bits_choices is not None else None
        return ActivationBudget(average_bits=self.a_bits_budget, choices=choices)

    def bit_budget(self):
        """The BitBudget these options describe (None without a budget)."""

        if self.weight_bits_budget is None and self.size_budget is None:
            for given, flag in ((self.w_bits_choices, "--w-bits-choices"), (self.sensitivity_rounding, "--sensitivity-rounding")):
                if given is not None:
                    raise ConfigError(f"{flag} applies to mixed precision under a budget: add --weight-bits-budget "
                                      "or --size-budget")
            return None
        size = (parse_bytes(self.size_budget, "--size-budget", "120KB, 1.5M or 250000 (bytes of weights)")
                if self.size_budget is not None else None)
        choices = self.w_bits_choices  # None: the target's among 2, 3, 4, 8 (QuantConfig)
        rounding = {"rounding": self.sensitivity_rounding} if self.sensitivity_rounding is not None else {}
        return BitBudget(average_bits=self.weight_bits_budget, size_bytes=size,
                         choices=tuple(choices) if choices is not None else None, **rounding)

    def resolved_reduce_range(self) -> bool:
        if self.reduce_range == "auto":

            return self.target == "ort-x86" and self.w_bits == 8 and has_vnni() is False
        if not isinstance(self.reduce_range, bool):
            raise ConfigError(f"reduce_range is {self.reduce_range!r}: choose true, false or auto")
        return self.reduce_range

    def quant_config(self):
        """The QuantConfig these options describe (ConfigError for a value out of range)."""

        recon = ReconConfig.preset(self.reconstruct, self.preset or "default", iterations=self.recon_iterations,
                                   batch_size=self.recon_batch_size, seed=self.seed, pd_weight=self.pd_weight)
        recon = replace(recon, qdrop=recon.qdrop and not self.no_qdrop,
                        prediction_difference=recon.prediction_difference and not self.no_pd,
                        distribution_correction=recon.distribution_correction and not self.no_dc,
                        learn_scales=recon.learn_scales and not self.no_learn_scales)
        return QuantConfig(w_bits=self.w_bits, a_bits=self.a_bits, calibrator=self.calibrator,
                           percentile=self.percentile, target=self.target, batch=self.batch,
                           first_last_8bit=self.first_last_8bit, require_all_quantized=self.require_all_quantized,
                           require_full_integer=self.require_full_integer,
                           low_bit_storage=self.low_bit_storage,
                           reduce_range=self.resolved_reduce_range(), reconstruction=recon,
                           bit_budget=self.bit_budget(), act_budget=self.act_budget(), **self._rounding())

    def _rounding(self) -> dict[str, str]:
        if self.weight_rounding is None:
            return {}
        return {"weight_rounding": self.weight_rounding}


@dataclass(frozen=True)
class EvaluateSpec:
    """`toolchain evaluate`'s options. data: labelled images [default: the model's built-in test set, which
    only the default model has; without data nothing is evaluated and no gate can be set].
    batch_size: images per run [default: by input size, evaluate.default_batch_size: 256, 55 at 224x224].
    latency_runs: batch-1 runs timed per model (0: no timing)."""

    data: str | None = None
    limit: int | None = None
    seed: int = 0
    batch_size: int | None = None
    runtime: str = "ort"
    latency_runs: int = 200


@dataclass(frozen=True)
class ExecutionSpec:
    """Where and how fast the stages run (the stage commands' --device, --threads, --cache-budget, --spill-dir,
    --providers, --channels-last, --compile, --reuse-memory)."""

    device: str = "auto"
    threads: int | None = None
    cache_budget: str | None = None
    spill_dir: str | None = None
    providers: str | None = None
    channels_last: str = "auto"
    compile: str = "auto"
    reuse_memory: str = "auto"

    def execution(self):

        budget = parse_bytes(self.cache_budget) if self.cache_budget is not None else None
        return Execution(device=self.device, threads=self.threads, cache_budget=budget, spill_dir=self.spill_dir,
                         providers=provider_names(self.providers), channels_last=self.channels_last, compile=self.compile,
                         reuse_memory=self.reuse_memory)


DEFAULT_QUANTIZE = (QuantizeSpec(name="W8A8"),
                    QuantizeSpec(name="W4A4-pdquant", w_bits=4, a_bits=4, reconstruct="pdquant"))
# Untouched entries of an ImageNet-size run: W4A4 pdquant at the cpu budget keeps ~25 % top-1 on MobileNetV2 in
# 17 min, while 4-bit weights at a 4.5-bit average (8 bits where the sensitivity says, 8-bit activations, no
# reconstruction) keep Lite0 77.0 / MobileNetV2 79.8 against FP32 77.2 / 82.6 in 5 min (README, bench/imagenet.py).
IMAGENET_DEFAULT_QUANTIZE = (QuantizeSpec(name="W8A8"),
                             QuantizeSpec(name="W4.5A8-mixed", w_bits=4, a_bits=8, weight_bits_budget=4.5,
                                          w_bits_choices=(4, 8)))


@dataclass(frozen=True)
class RunConfig:
    """One run: model -> calibration set -> each `quantize` entry -> evaluation -> gates -> report.

    model: a zoo name, package.module:factory (exported with `export`), or an .onnx file.
    calibration: existing calibration data (calibration .npz, .npz keyed by the input name, a folder of
    test_data_set_*/input_*.pb, an image dataset sampled with generate.n/seed, or from Python a
    CalibrationDataReader); None: `generate` synthesises it.
    run_dir: the run directory [default: runs/CONFIG-NAME, runs/default without a config file]."""

    model: str = DEFAULT_MODEL
    export: ExportSpec = field(default_factory=ExportSpec)
    preprocessing: PreprocessingOverrides = field(default_factory=PreprocessingOverrides)
    calibration: str | CalibrationReader | None = None
    generate: GenerateSpec = field(default_factory=GenerateSpec)
    quantize: tuple[QuantizeSpec, ...] = DEFAULT_QUANTIZE
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)
    gates: Gates = field(default_factory=Gates)
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    run_dir: str | None = None
    overwrite: bool = False
    version: int = CONFIG_VERSION

    @property
    def model_is_file(self) -> bool:
        return self.model.endswith(".onnx")

    def validate(self) -> None:
        """ConfigError, naming the key and the choices, for anything the stages would refuse later."""

        if self.version > CONFIG_VERSION:
            raise ConfigError(f"config version {self.version} is newer than this toolchain reads ({CONFIG_VERSION}); "
                              "upgrade the toolchain")
        _choice("generate.method", self.generate.method, METHODS)
        if self.generate.preset is not None:
            _choice("generate.preset", self.generate.preset, PRESETS)
        _choice("export.exporter", self.export.exporter, ("torchscript", "dynamo"))
        if self.generate.fdda_classes is not None:
            _choice("generate.fdda_classes", self.generate.fdda_classes, ("all", "present"))
        _choice("evaluate.runtime", self.evaluate.runtime, ("ort", "reference", "openvino", "qnn"))
        for key in ("n", "per_class", "batch_size", "iterations"):
            _at_least(f"generate.{key}", getattr(self.generate, key), 1)
        for key in ("limit", "batch_size"):
            _at_least(f"evaluate.{key}", getattr(self.evaluate, key), 1)
        _at_least("evaluate.latency_runs", self.evaluate.latency_runs, 0)
        if not self.quantize:
            raise ConfigError("quantize is empty: list at least one model to make, e.g. quantize: [{w_bits: 8, a_bits: 8}]")
        labels = [spec.label for spec in self.quantize]
        for i, spec in enumerate(self.quantize):
            if not NAME_PATTERN.match(spec.label):
                raise ConfigError(f"quantize[{i}].name {spec.label!r}: use letters, digits and _ . + - (it names the "
                                  "model's file in the run directory)")
            if labels.count(spec.label) > 1:
                raise ConfigError(f"quantize[{i}]: the name {spec.label!r} is used twice; give each entry its own name")
            _at_least(f"quantize[{i}].calib_limit", spec.calib_limit, 1)
            try:
                spec.quant_config()
            except ConfigError as err:
                raise ConfigError(f"quantize[{i}] ({spec.label}): {err}") from None
            _check_gates(f"quantize[{i}].gates", spec.gates)
        _check_gates("gates", self.gates)
        try:
            self.execution.execution()
        except ConfigError as err:
            raise ConfigError(f"execution: {err}") from None
        if self.evaluation_data() is None and any(self.gates.merged(s.gates).given() for s in self.quantize):
            raise ConfigError("an accuracy gate needs labelled images to measure: set evaluate.data (--eval-data)")

    def sized(self, input_pixels: int | None) -> RunConfig:
        """This config with the budgets left open filled in for a model whose input has `input_pixels` (H x W;
        None when unknown): ImageNet-size models get 64 DGH images and the cpu presets (EfficientNet-Lite0 on 2
        cores: generation 11 min, W8A8 1 min; see the README), and untouched quantize entries become
        IMAGENET_DEFAULT_QUANTIZE; smaller ones get 128 images and the default presets."""
        large = input_pixels is not None and input_pixels >= LARGE_INPUT_PIXELS
        generate = replace(self.generate, n=self.generate.n or (64 if large else 128),
                           preset=self.generate.preset or ("cpu" if large else "default"))
        entries = IMAGENET_DEFAULT_QUANTIZE if large and self.quantize == DEFAULT_QUANTIZE else self.quantize
        specs = tuple(replace(spec, preset=spec.preset or ("cpu" if large else "default")) for spec in entries)
        return replace(self, generate=generate, quantize=specs)

    def evaluation_data(self) -> str | None:
        """evaluate.data, else the built-in test set of the default model, else None (no evaluation)."""
        if self.evaluate.data is not None:
            return self.evaluate.data
        if self.model == DEFAULT_MODEL:

            return str(default_eval_data())
        return None


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} is {value!r}: choose one of {', '.join(choices)}")


def _at_least(key: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value}")


def _check_gates(key: str, gates: Gates | None) -> None:
    for name, value in (gates.given() if gates is not None else {}).items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}.{name} is {value}: give a fraction between 0 and 1 (0.01 = 1 point)")
