"""The report's inner sections that the quantizer's steps produce: a reconstruction unit's entry, a target
runtime's verdict, and the mixed-precision allocations, as typed values with their JSON form.

Usage:
    entry = UnitReport(3, "block", "x", "y", ("w",), True, True, (), LossTerms(1.2, 0.01), LossTerms(0.8, 0.01),
                       "learned", 4.2)
    entry.loss_after.objective(pd_weight=10.0)          # what a unit is judged by, regulariser aside
    UnitReport.from_dict(entry.to_dict()) == entry      # the checkpoint and report.json round trip
    verdict = RuntimeVerdict("openvino", True, coverage=1.0, details={...}, agreement_db=29.3)
    WeightAllocationReport.from_dict(report["mixed_precision"]).layers[0].bits

Each `to_dict` writes the keys, in the order, that the report always had (docs/report-json.md); `from_dict`
reads them back (a resumed reconstruction reads its finished units, a resumed run its model entries). They sit
in the quantizer's settings layer because the steps that fill them (reconstruct, target_check, mixed_precision)
and the report that holds them both read them. What stays a mapping: a runtime's own coverage report
(`RuntimeVerdict.details`, keys by runtime: runtimes.openvino / runtimes.qnn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toolchain.quantize.config import ActivationBudget, BitBudget


@dataclass(frozen=True)
class LossTerms:
    """A unit's loss on its evaluation samples: reconstruction error, and the prediction difference where the
    unit trains with it."""

    rec: float
    pd: float | None = None

    def objective(self, pd_weight: float | None) -> float:
        """The unit's training objective without the rounding regulariser."""
        return self.rec + (pd_weight or 0.0) * (self.pd or 0.0)

    def to_dict(self) -> dict[str, float]:
        return {"rec": self.rec} if self.pd is None else {"rec": self.rec, "pd": self.pd}

    @classmethod
    def from_dict(cls, raw: dict[str, float]) -> LossTerms:
        return cls(raw["rec"], raw.get("pd"))


@dataclass(frozen=True)
class UnitReport:
    """One reconstructed unit: where it sits, how it trained, its loss before and after, and whether it kept
    what it learned ("learned") or its starting rounding ("start", when the learned one measured worse)."""

    unit: int
    kind: str
    input: str
    output: str
    weights: tuple[str, ...]
    pd_term: bool
    distribution_correction: bool
    learned_scales: tuple[str, ...]
    loss_before: LossTerms
    loss_after: LossTerms
    kept: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "kind": self.kind, "input": self.input, "output": self.output,
                "weights": list(self.weights), "pd_term": self.pd_term,
                "distribution_correction": self.distribution_correction, "learned_scales": list(self.learned_scales),
                "loss_before": self.loss_before.to_dict(), "loss_after": self.loss_after.to_dict(), "kept": self.kept,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> UnitReport:
        return cls(raw["unit"], raw["kind"], raw["input"], raw["output"], tuple(raw["weights"]), raw["pd_term"],
                   raw["distribution_correction"], tuple(raw["learned_scales"]), LossTerms.from_dict(raw["loss_before"]),
                   LossTerms.from_dict(raw["loss_after"]), raw.get("kept", "learned"), raw["seconds"])


@dataclass(frozen=True)
class RuntimeVerdict:
    """What the target's runtime made of the model (target_check.verify_on_runtime). `coverage` and `details` are
    set where the runtime ran here, `agreement_db` (a float, or "inf") where its outputs were compared with the
    file's, `why` where it was not verified or could not run."""

    runtime: str
    verified: bool
    coverage: float | None = None
    details: dict[str, Any] | None = None  # the runtime's own report (runtimes.openvino / runtimes.qnn `coverage`)
    agreement_db: float | str | None = None
    why: str | None = None

    @property
    def on_htp(self) -> bool:
        """QNN: every node ran on the HTP backend."""
        return bool((self.details or {}).get("on_htp"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runtime": self.runtime, "verified": self.verified}
        if self.coverage is not None:
            out["coverage"] = self.coverage
        if self.details is not None:
            out["details"] = self.details
        if self.agreement_db is not None:
            out["agreement_db"] = self.agreement_db
        if self.why is not None:
            out["why"] = self.why
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RuntimeVerdict:
        return cls(raw["runtime"], raw["verified"], raw.get("coverage"), raw.get("details"), raw.get("agreement_db"),
                   raw.get("why"))


def _kl_to_dict(kl: dict[int, float]) -> dict[str, float]:
    return {str(bits): value for bits, value in sorted(kl.items())}


def _kl_from_dict(raw: dict[str, float]) -> dict[int, float]:
    return {int(bits): value for bits, value in raw.items()}


@dataclass(frozen=True)
class LayerChoice:
    """One weighted layer under a bit budget: its parameters, mean KL per candidate width, the chosen width."""

    node: str
    weight: str
    params: int
    kl: dict[int, float]
    bits: int

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "weight": self.weight, "params": self.params, "kl": _kl_to_dict(self.kl),
                "bits": self.bits}


@dataclass(frozen=True)
class WeightAllocationReport:
    """The report's `mixed_precision` section: the budget, the allocation's sizes and predicted KL, the KL
    measured with every choice applied at once, and each layer's choice."""

    budget: BitBudget
    layer_bits: tuple[tuple[str, int], ...]
    size_bits: int
    average_bits: float  # rounded to 4 decimals, as written
    total_params: int
    budget_bits: int
    predicted_kl: float
    front_size: int
    measured_kl: float
    sensitivity_seconds: float
    layers: tuple[LayerChoice, ...]

    @property
    def size_bytes(self) -> int:
        return -(-self.size_bits // 8)

    def to_dict(self) -> dict[str, Any]:
        return {"budget": _budget_dict(self.budget), "layer_bits": [list(pair) for pair in self.layer_bits],
                "size_bits": self.size_bits, "size_bytes": self.size_bytes, "average_bits": self.average_bits,
                "total_params": self.total_params, "budget_bits": self.budget_bits, "predicted_kl": self.predicted_kl,
                "front_size": self.front_size, "measured_kl": self.measured_kl,
                "sensitivity_seconds": self.sensitivity_seconds, "layers": [layer.to_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> WeightAllocationReport:
        return cls(BitBudget(**{**raw["budget"], "choices": tuple(raw["budget"]["choices"])}),
                   tuple((name, bits) for name, bits in raw["layer_bits"]), raw["size_bits"], raw["average_bits"],
                   raw["total_params"], raw["budget_bits"], raw["predicted_kl"], raw["front_size"], raw["measured_kl"],
                   raw["sensitivity_seconds"],
                   tuple(LayerChoice(layer["node"], layer["weight"], layer["params"], _kl_from_dict(layer["kl"]),
                                     layer["bits"]) for layer in raw["layers"]))


@dataclass(frozen=True)
class TensorChoice:
    """One activation tensor under a bit budget: its values per input, mean KL per width, the chosen width."""

    tensor: str
    elements: int
    kl: dict[int, float]
    bits: int

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "elements": self.elements, "kl": _kl_to_dict(self.kl), "bits": self.bits}


@dataclass(frozen=True)
class ActivationAllocationReport:
    """The report's `mixed_precision_activations` section: as the weights', per activation tensor; the tensors
    produced by multi-output nodes stay at a_bits (`fixed_at_a_bits`)."""

    budget: ActivationBudget
    average_bits: float  # rounded to 4 decimals, as written
    elements_per_input: int
    predicted_kl: float
    measured_kl: float
    sensitivity_seconds: float
    fixed_at_a_bits: tuple[str, ...]
    tensors: tuple[TensorChoice, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"budget": _budget_dict(self.budget), "average_bits": self.average_bits,
                "elements_per_input": self.elements_per_input, "predicted_kl": self.predicted_kl,
                "measured_kl": self.measured_kl, "sensitivity_seconds": self.sensitivity_seconds,
                "fixed_at_a_bits": list(self.fixed_at_a_bits), "tensors": [t.to_dict() for t in self.tensors]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ActivationAllocationReport:
        return cls(ActivationBudget(**{**raw["budget"], "choices": tuple(raw["budget"]["choices"])}),
                   raw["average_bits"], raw["elements_per_input"], raw["predicted_kl"], raw["measured_kl"],
                   raw["sensitivity_seconds"], tuple(raw["fixed_at_a_bits"]),
                   tuple(TensorChoice(t["tensor"], t["elements"], _kl_from_dict(t["kl"]), t["bits"])
                         for t in raw["tensors"]))


def _budget_dict(budget: BitBudget | ActivationBudget) -> dict[str, Any]:
    """The budget as given, its choices (filled in by QuantConfig) as a list."""
    return {**vars(budget), "choices": list(budget.choices or ())}
