"""The main job as a user runs it: `toolchain run` with no config, timed as its own process, several times.

Usage:
    python bench/default_run.py [--repeats 3]    # the machine alone: nothing else running

Writes bench/results/default_run.json and .md: the wall time of each repeat (the whole process: imports,
export, DGH generation, W8A8 and W4A4 pdquant, evaluation, latency, report), its peak memory, and the
table of the last repeat's report (FP32, W8A8, W4A4 pdquant: top-1, parameter size, batch-1 latency).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from measure import run_stage

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from toolchain.core.cpu import has_vnni
    from toolchain.pipeline.report import summary_table
    from toolchain.pipeline.run_report import RunReport

    records, report = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            folder = Path(tmp) / f"run{repeat}"
            record = run_stage(f"toolchain run #{repeat + 1}", ["run", "--run-dir", str(folder), "--json", "--quiet"],
                               dict(os.environ))
            report = json.loads((folder / "report.json").read_text())
            records.append({"seconds": record["seconds"], "peak_rss_gb": record["peak_rss_gb"],
                            "report_total_s": report["timing"]["total_s"], "stages_s": report["timing"]["stages_s"]})
    assert report is not None
    seconds = [r["seconds"] for r in records]
    result = {"machine": {"platform": platform.platform(), "cores": os.cpu_count(), "vnni": has_vnni()},
              "repeats": records, "median_s": statistics.median(seconds),
              "table": summary_table(RunReport.from_dict(report)), "models": [{k: m.get(k) for k in ("name", "top1", "agreement", "size", "timing")}
                                                         for m in report["models"]],
              "fp32_top1": report["evaluation"]["fp32"]["top1"], "fp32_latency_ms": report["timing"]["fp32_latency_ms_batch1"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "default_run.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# `toolchain run` (the built-in default), timed as a user runs it", "",
             f"Machine: {result['machine']['platform']}, {result['machine']['cores']} cores, VNNI {result['machine']['vnni']}; "
             "the machine alone. Wall time of the whole process (imports included), each repeat in a fresh run directory.", "",
             "| repeat | wall s | peak RSS GB | stages (report) |", "|---:|---:|---:|---|"]
    for i, r in enumerate(records):
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items())
        lines.append(f"| {i + 1} | {r['seconds']:.1f} | {r['peak_rss_gb']:.2f} | {stages} |")
    lines += ["", f"Median: {result['median_s']:.1f} s.", "", "Table of the last repeat:", "", "```", result["table"], "```", ""]
    (RESULTS / "default_run.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
