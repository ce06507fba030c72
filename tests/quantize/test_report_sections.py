"""The report's inner sections (quantize.report_sections): the JSON each writes, and reading it back.

Rule: each section writes the keys, in the order, that NAME.report.json always had (docs/report-json.md), omits
what it always omitted, and `from_dict(to_dict())` gives the same value back (a resumed reconstruction reads its
finished units from the checkpoint, a resumed run its model entries from report.json).
"""

from __future__ import annotations

import json

import pytest

from toolchain.quantize.config import BitBudget
from toolchain.quantize.report_sections import LayerChoice, LossTerms, RuntimeVerdict, UnitReport, WeightAllocationReport
from toolchain.quantize.report_types import TargetVerdict


def _round_trip(value):
    """Through JSON text, as the checkpoint and report.json hold it."""
    return type(value).from_dict(json.loads(json.dumps(value.to_dict())))


def test_a_unit_entry_keeps_its_keys_and_reads_back():
    unit = UnitReport(3, "block", "x", "y", ("w1", "w2"), True, False, ("s",), LossTerms(1.5, 0.25),
                      LossTerms(0.5, 0.125), "learned", 4.2)
    assert list(unit.to_dict()) == ["unit", "kind", "input", "output", "weights", "pd_term", "distribution_correction",
                                    "learned_scales", "loss_before", "loss_after", "kept", "seconds"]
    assert unit.to_dict()["loss_after"] == {"rec": 0.5, "pd": 0.125}
    assert _round_trip(unit) == unit


def test_loss_terms_without_the_pd_term_write_rec_alone_and_judge_by_it():
    """BRECQ units (no PD term) write {"rec"} only; the objective is rec + pd_weight * pd (exact here: binary
    fractions)."""
    assert LossTerms(0.75).to_dict() == {"rec": 0.75}
    assert LossTerms(0.75).objective(pd_weight=10.0) == 0.75
    assert LossTerms(0.75, 0.125).objective(pd_weight=4.0) == 1.25
    assert LossTerms(0.75, 0.125).objective(pd_weight=None) == 0.75


def test_a_checkpoint_written_before_units_said_what_they_kept_reads_as_learned():
    raw = UnitReport(0, "layer", "a", "b", (), False, False, (), LossTerms(1.0), LossTerms(0.5), "learned", 1.0).to_dict()
    del raw["kept"]
    assert UnitReport.from_dict(raw).kept == "learned"


@pytest.mark.parametrize("verdict, keys", [
    (RuntimeVerdict("tensorrt", False, why="needs a GPU"), ["runtime", "verified", "why"]),
    (RuntimeVerdict("qnn", False, 0.9, {"on_htp": False}), ["runtime", "verified", "coverage", "details"]),
    (RuntimeVerdict("openvino", True, 1.0, {"coverage": 1.0}, 29.31), ["runtime", "verified", "coverage", "details",
                                                                       "agreement_db"]),
    (RuntimeVerdict("openvino", False, 1.0, {}, "inf", "disagrees"), ["runtime", "verified", "coverage", "details",
                                                                      "agreement_db", "why"]),
])
def test_a_runtime_verdict_writes_the_keys_of_its_case_in_order(verdict, keys):
    """The four shapes target_check gives: not run here, run (QNN off the HTP), run and compared, compared and
    disagreeing; the target section puts its name and layout problems first."""
    assert list(verdict.to_dict()) == keys
    target = TargetVerdict("t", ["a problem"], verdict)
    assert list(target.to_dict()) == ["name", "layout_problems", *keys]
    assert _round_trip(target) == target and target.verified == verdict.verified


def test_only_a_verdict_whose_details_say_so_is_on_htp():
    assert RuntimeVerdict("qnn", True, 1.0, {"on_htp": True}).on_htp
    assert not RuntimeVerdict("qnn", False, 0.5, {"on_htp": False}).on_htp
    assert not RuntimeVerdict("tensorrt", False, why="needs a GPU").on_htp


def test_a_weight_allocation_keeps_its_keys_and_reads_back():
    """The budget as given (choices as a list), the sizes (size_bytes derived), KL per width keyed by text."""
    section = WeightAllocationReport(
        BitBudget(average_bits=3.5, choices=(2, 4, 8)), (("conv", 4), ("fc", 8)), 600, 3.75, 160, 560, 0.25, 7, 0.375,
        1.5, (LayerChoice("conv", "w", 100, {8: 0.0625, 2: 1.0, 4: 0.125}, 4),
              LayerChoice("fc", "v", 60, {2: 2.0, 4: 0.5, 8: 0.25}, 8)))
    raw = section.to_dict()
    assert list(raw) == ["budget", "layer_bits", "size_bits", "size_bytes", "average_bits", "total_params",
                         "budget_bits", "predicted_kl", "front_size", "measured_kl", "sensitivity_seconds", "layers"]
    assert raw["budget"] == {"average_bits": 3.5, "size_bytes": None, "choices": [2, 4, 8], "samples": 256,
                             "rounding": "compensated"}
    assert raw["size_bytes"] == 75 and raw["layer_bits"] == [["conv", 4], ["fc", 8]]
    assert list(raw["layers"][0]["kl"]) == ["2", "4", "8"]  # sorted by width, whatever order they were measured in
    assert _round_trip(section) == section
