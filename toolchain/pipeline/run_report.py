"""The run's report.json as typed values: what `toolchain run` measured, and how it serialises.

Usage:
    report = RunReport.from_dict(json.loads(Path("runs/default/report.json").read_text()))
    report.models[0].top1, report.evaluation.fp32.top1, report.gates.passed, report.timing.total_s
    report.to_dict()       # report.json's keys in their order (docs/report-json.md), schema_version first

The per-model sections that come from the quantizer's own report (`target_verdict`, `mixed_precision`,
`mixed_precision_activations`) and the provenance, seeds and losses are kept as the JSON mappings they are.
Optional sections are omitted from the JSON exactly when they were before (accuracy without evaluation data,
latency with latency_runs 0, `resumed` in a fresh run, `plots` until they are drawn).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from toolchain.quantize.report_sections import ActivationAllocationReport, LossTerms, WeightAllocationReport
from toolchain.quantize.report_types import QuantReport, TargetVerdict

T = TypeVar("T")


def _optional(read: Callable[[dict[str, Any]], T], raw: dict[str, Any] | None) -> T | None:
    """A section read back from report.json, or None where it was null."""
    return read(raw) if raw is not None else None

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ExportCheck:
    relative_diff: float
    tolerance: float


@dataclass(frozen=True)
class ModelSection:
    """The FP32 model: where it came from, what it holds, how its export verified (None: given as a file)."""

    source: str
    file: str
    sha256: str
    num_batchnorm: int
    quantizable_layers: int
    ops: dict[str, int]
    input_shape: list[int]
    export: ExportCheck | None

    def to_dict(self) -> dict[str, Any]:
        export = None if self.export is None else {"relative_diff": self.export.relative_diff,
                                                   "tolerance": self.export.tolerance}
        return {"source": self.source, "file": self.file, "sha256": self.sha256, "num_batchnorm": self.num_batchnorm,
                "quantizable_layers": self.quantizable_layers, "ops": self.ops, "input_shape": self.input_shape,
                "export": export}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelSection:
        export = raw["export"]
        return cls(raw["source"], raw["file"], raw["sha256"], raw["num_batchnorm"], raw["quantizable_layers"], raw["ops"],
                   raw["input_shape"], None if export is None else ExportCheck(export["relative_diff"], export["tolerance"]))


@dataclass(frozen=True)
class CalibrationSection:
    """The calibration set the run used, from its manifest."""

    file: str
    method: str | None
    n: int
    form: str | None
    source: str | None
    preset: str | None
    seed: int | None
    losses: dict[str, Any]  # "initial" / "final": the generation's loss terms
    loss_curve: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "method": self.method, "n": self.n, "form": self.form, "source": self.source,
                "preset": self.preset, "seed": self.seed, "losses": self.losses, "loss_curve": self.loss_curve}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CalibrationSection:
        return cls(**raw)


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float


@dataclass(frozen=True)
class Evaluation:
    data: str
    runtime: str
    n: int
    fp32: Accuracy

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "runtime": self.runtime, "n": self.n,
                "fp32": {"top1": self.fp32.top1, "top5": self.fp32.top5}}

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Evaluation | None:
        if raw is None:
            return None
        return cls(raw["data"], raw["runtime"], raw["n"], Accuracy(raw["fp32"]["top1"], raw["fp32"]["top5"]))


@dataclass(frozen=True)
class Coverage:
    """What onnxruntime CPU runs on integer kernels: share of ops, of MACs, and the float ops left (text)."""

    ops: float
    macs: float | None
    fully_integer: bool
    float_ops: str


@dataclass(frozen=True)
class LayerLine:
    node: str
    op_type: str
    weight_bits: int | None
    output_bits: int | None
    sqnr_db: float | None


@dataclass(frozen=True)
class UnitLine:
    unit: int
    kind: str
    output: str
    loss_before: LossTerms
    loss_after: LossTerms
    kept: str

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "kind": self.kind, "output": self.output, "loss_before": self.loss_before.to_dict(),
                "loss_after": self.loss_after.to_dict(), "kept": self.kept}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> UnitLine:
        return cls(raw["unit"], raw["kind"], raw["output"], LossTerms.from_dict(raw["loss_before"]),
                   LossTerms.from_dict(raw["loss_after"]), raw["kept"])


@dataclass(frozen=True)
class ModelSize:
    weights: int
    bias: int
    bytes: int
    fp32: int
    file_bytes: int


@dataclass(frozen=True)
class GateResult:
    given: dict[str, float]
    passed: bool
    failures: list[str]


@dataclass(frozen=True)
class ModelAccuracy:
    top1: float
    top5: float
    agreement: float  # with the FP32 model, which a run always evaluates beside it
    drop: float  # FP32 top-1 minus this model's


@dataclass(frozen=True)
class Latency:
    latency_ms_batch1: float
    latency_vs_fp32: float


@dataclass(frozen=True)
class ModelEntry:
    """One quantized model of the run (its full report is the NAME.report.json named by `report`)."""

    name: str
    file: str
    report: str
    w_bits: int
    a_bits: int
    reconstruct: str
    preset: str | None
    calibrator: str
    weight_rounding: str
    target: str
    reduce_range: bool
    output_sqnr_db: float | None
    coverage: Coverage
    target_verdict: TargetVerdict | None
    layers: list[LayerLine]
    reconstruction: list[UnitLine]
    warnings: list[str]
    mixed_precision: WeightAllocationReport | None
    mixed_precision_activations: ActivationAllocationReport | None
    size: ModelSize | None = None
    accuracy: ModelAccuracy | None = None  # None: the run has no evaluation data
    gates: GateResult | None = None
    timing: Latency | None = None  # None: latency_runs 0

    @property
    def top1(self) -> float | None:
        return self.accuracy.top1 if self.accuracy is not None else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "file": self.file, "report": self.report, "w_bits": self.w_bits, "a_bits": self.a_bits,
            "reconstruct": self.reconstruct, "preset": self.preset, "calibrator": self.calibrator,
            "weight_rounding": self.weight_rounding, "target": self.target, "reduce_range": self.reduce_range,
            "output_sqnr_db": self.output_sqnr_db, "coverage": vars(self.coverage).copy(),
            "target_verdict": self.target_verdict.to_dict() if self.target_verdict is not None else None,
            "layers": [vars(layer).copy() for layer in self.layers],
            "reconstruction": [unit.to_dict() for unit in self.reconstruction], "warnings": self.warnings,
            "mixed_precision": self.mixed_precision.to_dict() if self.mixed_precision is not None else None,
            "mixed_precision_activations": (self.mixed_precision_activations.to_dict()
                                            if self.mixed_precision_activations is not None else None),
        }
        if self.size is not None:
            out["size"] = vars(self.size).copy()
        if self.accuracy is not None:
            out.update(vars(self.accuracy))
        if self.gates is not None:
            out["gates"] = vars(self.gates).copy()
        if self.timing is not None:
            out["timing"] = vars(self.timing).copy()
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelEntry:
        accuracy = (ModelAccuracy(raw["top1"], raw["top5"], raw["agreement"], raw["drop"]) if "top1" in raw else None)
        return cls(
            raw["name"], raw["file"], raw["report"], raw["w_bits"], raw["a_bits"], raw["reconstruct"], raw["preset"],
            raw["calibrator"], raw["weight_rounding"], raw["target"], raw["reduce_range"], raw["output_sqnr_db"],
            Coverage(**raw["coverage"]), _optional(TargetVerdict.from_dict, raw["target_verdict"]),
            [LayerLine(**layer) for layer in raw["layers"]], [UnitLine.from_dict(unit) for unit in raw["reconstruction"]],
            raw["warnings"], _optional(WeightAllocationReport.from_dict, raw["mixed_precision"]),
            _optional(ActivationAllocationReport.from_dict, raw["mixed_precision_activations"]),
            ModelSize(**raw["size"]) if "size" in raw else None, accuracy, GateResult(**raw["gates"]) if "gates" in raw else None,
            Latency(**raw["timing"]) if "timing" in raw else None)


@dataclass(frozen=True)
class Timing:
    """Wall seconds per stage of this session and in all; batch-1 latency settings when latency was measured."""

    stages_s: dict[str, float]
    fp32_latency_ms_batch1: float | None = None
    latency_runs: int | None = None
    latency_threads: int | None = None
    total_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stages_s": self.stages_s}
        if self.fp32_latency_ms_batch1 is not None:
            out.update(fp32_latency_ms_batch1=self.fp32_latency_ms_batch1, latency_runs=self.latency_runs,
                       latency_threads=self.latency_threads)
        if self.total_s is not None:
            out["total_s"] = self.total_s
        return out


@dataclass(frozen=True)
class RunGates:
    passed: bool
    failures: list[str]


@dataclass(frozen=True)
class RunReport:
    """Everything a run measured (docs/report-json.md lists every key)."""

    toolchain: dict[str, Any]  # provenance: versions, platform, CPU features
    config_hash: str
    config: str  # the resolved config's file in the run directory
    seeds: dict[str, Any]
    model: ModelSection
    calibration: CalibrationSection
    evaluation: Evaluation | None
    models: list[ModelEntry]
    timing: Timing
    gates: RunGates
    resumed: dict[str, Any] | None = None  # {"reused_stages": [...]} after --resume
    plots: dict[str, str] | None = field(default=None)  # figure name -> file, once drawn

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "toolchain": self.toolchain, "config_hash": self.config_hash,
            "config": self.config, "seeds": self.seeds, "model": self.model.to_dict(),
            "calibration": self.calibration.to_dict(),
            "evaluation": None if self.evaluation is None else self.evaluation.to_dict(),
            "models": [model.to_dict() for model in self.models], "timing": self.timing.to_dict(),
        }
        if self.resumed is not None:
            out["resumed"] = self.resumed
        out["gates"] = vars(self.gates).copy()
        if self.plots is not None:
            out["plots"] = self.plots
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunReport:
        timing = raw["timing"]
        return cls(raw["toolchain"], raw["config_hash"], raw["config"], raw["seeds"], ModelSection.from_dict(raw["model"]),
                   CalibrationSection.from_dict(raw["calibration"]), Evaluation.from_dict(raw["evaluation"]),
                   [ModelEntry.from_dict(model) for model in raw["models"]],
                   Timing(timing["stages_s"], timing.get("fp32_latency_ms_batch1"), timing.get("latency_runs"),
                          timing.get("latency_threads"), timing.get("total_s")),
                   RunGates(**raw["gates"]), raw.get("resumed"), raw.get("plots"))


def model_entry(label: str, w_bits: int, a_bits: int, reconstruct: str, preset: str | None, target: str,
                reduce_range: bool, quant_report: QuantReport, file: str, report_file: str) -> ModelEntry:
    """The run's line for one quantized model, from the quantizer's report (NAME.report.json)."""
    # deferred: onnxruntime loads only when this runs (start-up time)
    from toolchain.runtimes.coverage import float_ops_text

    fusion, summary = quant_report.fusion, quant_report.summary
    units = (quant_report.reconstruction.units if quant_report.reconstruction is not None else None) or []
    return ModelEntry(
        label, file, report_file, w_bits, a_bits, reconstruct, preset if reconstruct != "none" else None,
        quant_report.calibration.activation_calibrator, quant_report.calibration.weight_rounding, target,
        reduce_range, summary.output_sqnr_db,
        Coverage(fusion.coverage, fusion.mac_coverage, fusion.fully_integer, float_ops_text(fusion)),
        quant_report.target,
        [LayerLine(layer.node, layer.op_type, layer.weight_bits, layer.output_bits, layer.sqnr_db)
         for layer in quant_report.layers],
        [UnitLine(u.unit, u.kind, u.output, u.loss_before, u.loss_after, u.kept) for u in units],
        list(quant_report.warnings), quant_report.mixed_precision, quant_report.mixed_precision_activations)


def gate_result(name: str, gates: dict[str, float], accuracy: ModelAccuracy | None) -> GateResult:
    """Each given gate checked against the model's measured accuracy (a tolerance of 1e-9 for float rounding)."""
    failures = []
    if accuracy is not None:
        checks = {"min_top1": (accuracy.top1, ">=", "top-1"), "max_drop": (accuracy.drop, "<=", "top-1 drop against FP32"),
                  "min_agreement": (accuracy.agreement, ">=", "top-1 agreement with FP32")}
        for gate, bound in gates.items():
            value, direction, what = checks[gate]
            ok = value >= bound - 1e-9 if direction == ">=" else value <= bound + 1e-9
            if not ok:
                failures.append(f"{name}: {what} {value:.4f} {'<' if direction == '>=' else '>'} {gate} {bound}")
    return GateResult(gates, not failures, failures)
