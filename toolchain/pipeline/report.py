"""The run's report: report.json (every fact) and report.md (the same facts for people, with the plots).

Usage:
    report = write_reports(report, folder, images)   # a RunReport: draws the plots, writes report.json and report.md
    print(summary_table(report))                     # the table `toolchain run` prints

Fields that depend on timing are all under keys named "timing" (report.json's "timing", each model's "timing"),
so two runs of one config compare equal once those are dropped (tests/pipeline/test_pipeline.py does so).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from toolchain.core.atomic import atomic_output
from toolchain.pipeline.plots import draw_plots
from toolchain.pipeline.run_report import ModelEntry, RunReport
from toolchain.quantize.report_types import TargetVerdict


def write_reports(report: RunReport, folder: Path, images: dict) -> RunReport:
    """The report with its plots drawn, written as report.json and report.md into `folder`."""
    report = replace(report, plots=draw_plots(report, folder, images))
    with atomic_output(folder / "report.json") as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=1, default=float) + "\n")
    with atomic_output(folder / "report.md") as tmp:
        tmp.write_text(markdown(report), encoding="utf-8")
    return report


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _size(count: int) -> str:
    return f"{count / 1024:.1f} KiB" if count < 1 << 20 else f"{count / (1 << 20):.2f} MiB"


def table_rows(report: RunReport) -> list[list[str]]:
    """Header and one row per model: FP32 first, then each quantized model."""
    fp32_ms = report.timing.fp32_latency_ms_batch1
    header = ["model", "top-1 %", "vs FP32", "agreement", "parameters", "vs FP32", "batch-1 ms", "vs FP32", "integer ops", "gates"]
    first = report.models[0].size.fp32 if report.models and report.models[0].size else 0
    fp32_top1 = report.evaluation.fp32.top1 if report.evaluation is not None else None
    rows = [header, ["FP32", _percent(fp32_top1) if report.evaluation is not None else "–", "", "", _size(first), "1.00",
                     f"{fp32_ms:.3f}" if fp32_ms else "–", "1.00" if fp32_ms else "–", "", ""]]
    for model in report.models:
        rows.append(_model_row(model))
    return rows


def _model_row(model: ModelEntry) -> list[str]:
    size, speed, gates, accuracy = model.size, model.timing, model.gates, model.accuracy
    assert size is not None and gates is not None, "a finished model has its size and gates"
    return [
        model.name, _percent(model.top1),
        f"{-100 * accuracy.drop + 0.0:+.2f}" if accuracy is not None else "–",
        _percent(accuracy.agreement if accuracy is not None else None), _size(size.bytes), f"{size.bytes / size.fp32:.2f}",
        f"{speed.latency_ms_batch1:.3f}" if speed else "–", f"{speed.latency_vs_fp32:.2f}" if speed else "–",
        f"{model.coverage.ops:.2f}",
        ("pass" if gates.passed else "FAIL") if gates.given else "–",
    ]


def summary_table(report: RunReport) -> str:
    rows = table_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


_RUNTIMES = {"ort": "onnxruntime", "reference": "onnxruntime unoptimised (the reference)", "openvino": "OpenVINO",
             "qnn": "QNN HTP"}
_CAPTIONS = {
    "accuracy": "Top-1: FP32 and each quantized model",
    "layer_sqnr": "Per-layer SQNR against FP32",
    "reconstruction": "Per-unit reconstruction loss before and after",
    "generation": "Calibration-image generation loss",
    "images": "Calibration images (and real ones, where given)",
    "coverage": "Integer coverage in onnxruntime",
}
_MISSING = {
    "accuracy": "no evaluation data (set evaluate.data)",
    "reconstruction": "no model was reconstructed (reconstruct: brecq or pdquant)",
    "generation": "the calibration set was given, not generated",
    "layer_sqnr": "no layer output is quantized",
}


def _mixed_section(entry: ModelEntry) -> list[str]:
    """Per-layer bits and sensitivities of a model made under a bit budget."""
    mixed = entry.mixed_precision
    if mixed is None:
        return []
    choices = sorted(mixed.layers[0].kl) if mixed.layers else []
    rounded = "with compensation" if mixed.budget.rounding == "compensated" else "to nearest"
    lines = ["", f"### {entry.name}: bits per layer under the budget", "",
             f"{mixed.average_bits:.3f} average weight bits, {mixed.size_bytes:,} bytes of weights (budget "
             f"{mixed.budget_bits // 8:,}); KL predicted by the sum {mixed.predicted_kl:.4g}, measured "
             f"(weights only) {mixed.measured_kl:.4g}; sensitivity measured in {mixed.sensitivity_seconds} s, each layer "
             f"rounded {rounded}.", "",
             "| layer | weights | bits | " + " | ".join(f"KL at {b} bits" for b in choices) + " |",
             "|---|---:|---:|" + "---:|" * len(choices)]
    for layer in mixed.layers:
        lines.append(f"| {layer.node} | {layer.params:,} | {layer.bits} | "
                     + " | ".join(f"{layer.kl[b]:.3g}" for b in choices) + " |")
    return lines


def _mixed_activations_section(entry: ModelEntry) -> list[str]:
    """Per-tensor activation bits and sensitivities of a model made under an activation budget."""
    mixed = entry.mixed_precision_activations
    if mixed is None:
        return []
    choices = sorted(mixed.budget.choices or ())
    fixed = (f" Kept at --a-bits (produced by multi-output nodes): {', '.join(mixed.fixed_at_a_bits)}."
             if mixed.fixed_at_a_bits else "")
    lines = ["", f"### {entry.name}: activation bits per tensor under the budget", "",
             f"{mixed.average_bits:.3f} average activation bits over {mixed.elements_per_input:,} values per input "
             f"(budget {mixed.budget.average_bits}); KL predicted by the sum {mixed.predicted_kl:.4g}, measured "
             f"(activations only) {mixed.measured_kl:.4g}; sensitivity measured in {mixed.sensitivity_seconds} s.{fixed}",
             "", "| tensor | values per input | bits | " + " | ".join(f"KL at {b} bits" for b in choices) + " |",
             "|---|---:|---:|" + "---:|" * len(choices)]
    for tensor in mixed.tensors:
        lines.append(f"| {tensor.tensor} | {tensor.elements:,} | {tensor.bits} | "
                     + " | ".join(f"{tensor.kl[b]:.3g}" for b in choices) + " |")
    return lines


def _verdict(target: TargetVerdict | None) -> str:
    """The target runtime's own verdict (ort-x86's is the integer-coverage column)."""
    if target is None or target.name == "ort-x86":
        return ""
    runtime = target.runtime
    if runtime.coverage is None:
        return f" (not run here: {runtime.why})"
    state = "verified" if runtime.verified else f"NOT verified: {runtime.why}"
    sqnr = f", SQNR {runtime.agreement_db} dB against the reference" if runtime.agreement_db is not None else ""
    return f" ({runtime.runtime}: integer coverage {runtime.coverage:.2f}{sqnr}, {state})"


def markdown(report: RunReport) -> str:
    """report.md: the table, the figures, each model, the calibration set and the provenance."""
    lines = [f"# Run report: {report.model.source}", ""]
    if report.gates.failures:
        lines += ["**Accuracy gate FAILED:** " + "; ".join(report.gates.failures), ""]
    elif any(m.gates is not None and m.gates.given for m in report.models):
        lines += ["Every accuracy gate passed.", ""]
    evaluation, timing = report.evaluation, report.timing
    where = (f"top-1 on {evaluation.n} images ({evaluation.data}), quantized models in "
             f"{_RUNTIMES.get(evaluation.runtime, evaluation.runtime)}; " if evaluation else "no evaluation data; ")
    lines += [_markdown_table(table_rows(report)), "",
              f"{where}parameters at their bit-widths (biases 32-bit); batch-1 latency in onnxruntime with "
              f"{timing.latency_threads if timing.latency_threads is not None else '?'} threads, median of "
              f"{timing.latency_runs or 0} calls in alternating rounds; integer ops: onnxruntime CPU's fused integer "
              "kernels (0 below 8 bits: emulated in float).", ""]
    lines += ["## Figures", ""]
    for name, caption in _CAPTIONS.items():
        file = (report.plots or {}).get(name)
        lines += [f"![{caption}]({file})", ""] if file else [f"*{caption}: not drawn, {_MISSING.get(name, 'no data')}.*", ""]
    lines += ["## Models", ""]
    for entry in report.models:
        lines += _model_lines(entry)
    for entry in report.models:
        lines += _mixed_section(entry)
        lines += _mixed_activations_section(entry)
    return "\n".join(lines + _calibration_lines(report) + _provenance_lines(report))


def _model_lines(entry: ModelEntry) -> list[str]:
    recon = f", {entry.reconstruct} preset {entry.preset}" if entry.reconstruct != "none" else ""
    lines = [f"- **{entry.name}** `{entry.file}` (report `{entry.report}`): W{entry.w_bits}A{entry.a_bits}, "
             f"{entry.calibrator}{recon}, target {entry.target}"
             f"{', 8-bit weights in 7 bits (reduce_range)' if entry.reduce_range else ''}"
             f"{_verdict(entry.target_verdict)}; output SQNR "
             f"{entry.output_sqnr_db} dB; ops onnxruntime runs in float: {entry.coverage.float_ops}"]
    return lines + [f"  - warning: {warning}" for warning in entry.warnings]


def _calibration_lines(report: RunReport) -> list[str]:
    calibration = report.calibration
    final = (calibration.losses or {}).get("final", {})
    return ["", "## Calibration", "",
            f"`{calibration.file}`: {calibration.n} inputs, method {calibration.method}"
            + (f", preset {calibration.preset}" if calibration.preset else "")
            + (f", seed {calibration.seed}" if calibration.seed is not None else "")
            + (f", final BN distance {final['bn_distance']:.4g}" if "bn_distance" in final else "")
            + (f", from {calibration.source}" if calibration.source else "") + ".", ""]


def _provenance_lines(report: RunReport) -> list[str]:
    tool, seeds, timing = report.toolchain, report.seeds, report.timing
    return ["## Provenance", "",
            f"- config: `{report.config}`, sha256 {report.config_hash}",
            f"- seeds: generate {seeds['generate']}, evaluate {seeds['evaluate']}, quantize "
            + ", ".join(f"{k} {v}" for k, v in seeds["quantize"].items()),
            f"- model: `{report.model.file}`, sha256 {report.model.sha256}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in tool.items() if k not in ("cpu", "platform", "machine") and v),
            f"- machine: {tool['platform']}, {tool['cpu']['usable_cores']} usable cores, VNNI {tool['cpu']['vnni']}",
            f"- wall time: {timing.total_s or 0:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in timing.stages_s.items())
            + ")", ""]
