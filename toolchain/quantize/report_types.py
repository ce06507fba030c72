"""The quantizer's report (NAME.report.json) as typed values, and how it serialises.

Usage:
    result = quantize(model, calib, QuantConfig())
    result.typed.summary.output_sqnr_db, result.typed.layers[0].weight_bits, result.typed.target.verified
    result.report == result.typed.to_dict()      # the JSON form users' scripts read (docs/report-json.md)

Optional keys are omitted from the JSON exactly when they were before: a layer's `fused_activation`, its weight
and output parameters, `batch` without a fixed batch, the mixed-precision sections without a budget,
`output_headroom` on real data, the reconstruction's units when none ran. The fusion coverage is
runtimes.coverage's FusionReport; the reconstruction's units, the runtime's verdict and the mixed-precision
allocations are quantize.report_sections' types. What stays a mapping is what has its own serialised form
elsewhere: the config (QuantConfig.to_dict), the calibration manifest (its generator's keys), a layer's and an
activation's parameters (QParams.to_dict), a runtime's own coverage report (keys by runtime).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolchain.quantize.report_sections import (
    ActivationAllocationReport,
    RuntimeVerdict,
    UnitReport,
    WeightAllocationReport,
)

if TYPE_CHECKING:  # start-up time: runtimes.coverage imports onnxruntime; the CLI imports these types at start
    from toolchain.runtimes.coverage import FusionReport

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LayerReport:
    """One computing layer: its weight's bits and parameters, its output's, and the output's SQNR against FP32."""

    node: str
    op_type: str
    output: str
    fused_activation: str | None = None  # a ReLU/Clip quantized after the layer
    weight_bits: int | None = None
    weight: dict[str, Any] | None = None
    output_bits: int | None = None  # None: the output stays float (the academic setting's network output)
    output_qparams: dict[str, Any] | None = None
    sqnr_db: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node, "op_type": self.op_type, "output": self.output}
        if self.fused_activation:
            out["fused_activation"] = self.fused_activation
        if self.weight_bits is not None:
            out["weight_bits"], out["weight"] = self.weight_bits, self.weight
        if self.output_qparams is not None:
            out.update(output_bits=self.output_bits, output_qparams=self.output_qparams, sqnr_db=self.sqnr_db)
        else:
            out["output_bits"] = None
        return out


@dataclass(frozen=True)
class ActivationReport:
    bits: int
    one_sided: bool
    shared_with: str | None
    constant: bool
    floor: float | None
    qparams: dict[str, Any]  # type, axis, scale, zero_point (QParams.to_dict)

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "one_sided": self.one_sided, "shared_with": self.shared_with,
                "constant": self.constant, "floor": self.floor, **self.qparams}


@dataclass(frozen=True)
class ReportSummary:
    quantized_layers: int
    output_sqnr_db: float | None
    fusion_coverage: float
    mac_coverage: float | None
    fully_integer: bool
    float_ops: int


@dataclass(frozen=True)
class CalibrationReport:
    """The calibration set (its manifest's keys), how ranges and weight rounding were chosen on it."""

    n: int
    sqnr_samples: int
    manifest: dict[str, Any]
    activation_calibrator: str = ""
    weight_rounding: str = ""
    output_headroom: dict[str, Any] | None = None  # synthetic data: the outputs whose range top was widened

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "sqnr_samples": self.sqnr_samples}
        out.update(self.manifest)  # a manifest's own "n" wins, in the first position, as it always did
        out.update(activation_calibrator=self.activation_calibrator, weight_rounding=self.weight_rounding)
        if self.output_headroom is not None:
            out["output_headroom"] = self.output_headroom
        return out


@dataclass(frozen=True)
class TargetVerdict:
    """The target's layout rules read back from the graph, and its runtime's verdict."""

    name: str
    layout_problems: list[str]
    runtime: RuntimeVerdict

    @property
    def verified(self) -> bool:
        return self.runtime.verified

    @property
    def why(self) -> str | None:
        return self.runtime.why

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layout_problems": self.layout_problems, **self.runtime.to_dict()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TargetVerdict:
        return cls(raw["name"], raw["layout_problems"], RuntimeVerdict.from_dict(raw))


@dataclass(frozen=True)
class ReconstructionReport:
    """The reconstruction as run; `units` is None when none ran (the JSON then holds the config alone)."""

    config: dict[str, Any]
    units: list[UnitReport] | None = None
    notes: list[str] | None = None
    seconds: float | None = None
    cache: dict[str, Any] | None = None
    resumed_after_units: int | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.units is None:
            return {"config": self.config}
        return {"config": self.config, "units": [unit.to_dict() for unit in self.units], "notes": self.notes,
                "seconds": self.seconds, "cache": self.cache, "resumed_after_units": self.resumed_after_units}


@dataclass(frozen=True)
class QuantReport:
    """Everything the quantizer measured and decided (docs/report-json.md lists every key)."""

    toolchain_version: str
    source: str
    config: dict[str, Any]
    calibration: CalibrationReport
    opset: int
    batchnorm_folded: int
    layers: list[LayerReport]
    activations: dict[str, ActivationReport]
    unquantized: list[dict[str, str]]
    integer_nodes: list[dict[str, str]]
    fusion: FusionReport
    summary: ReportSummary
    target: TargetVerdict | None = None  # set by the driver once the graph is final
    warnings: tuple[str, ...] = ()
    reconstruction: ReconstructionReport | None = None
    batch: int | None = None
    mixed_precision: WeightAllocationReport | None = None
    mixed_precision_activations: ActivationAllocationReport | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "toolchain_version": self.toolchain_version, "source": self.source,
            "config": self.config, "calibration": self.calibration.to_dict(), "opset": self.opset,
            "batchnorm_folded": self.batchnorm_folded, "layers": [layer.to_dict() for layer in self.layers],
            "activations": {t: a.to_dict() for t, a in self.activations.items()}, "unquantized": self.unquantized,
            "integer_nodes": self.integer_nodes, "fusion": self.fusion.to_dict(), "summary": vars(self.summary).copy(),
        }
        if self.batch is not None:
            out["batch"] = self.batch
        out["target"] = self.target.to_dict() if self.target is not None else None
        out["warnings"] = list(self.warnings)
        out["reconstruction"] = self.reconstruction.to_dict() if self.reconstruction is not None else None
        if self.mixed_precision is not None:
            out["mixed_precision"] = self.mixed_precision.to_dict()
        if self.mixed_precision_activations is not None:
            out["mixed_precision_activations"] = self.mixed_precision_activations.to_dict()
        out["seconds"] = self.seconds
        return out
