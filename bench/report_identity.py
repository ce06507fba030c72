"""The quantizer's and the pipeline's reports made by one code tree, timings dropped, to compare two trees.

Usage:
    python bench/report_identity.py --code /tmp/old-tree --out /tmp/old_reports.json   # a git worktree
    python bench/report_identity.py --out /tmp/new_reports.json                        # this checkout
    python bench/report_identity.py --compare /tmp/old_reports.json /tmp/new_reports.json   # exit 1 on a difference

A refactoring of the report's types must leave report.json as users' scripts read it: same keys, same order, same
values. This runs `toolchain quantize` on ResNet-20 (exported from ../shared/weights, a 64-image DGH set, seed 0,
preset fast) in 10 configurations that fill every report section (plain W8A8, W4A4 pdquant with its units, the
openvino / tensorrt / qnn target verdicts, weight and activation bit budgets, --first-last-8bit, a fixed batch,
real CIFAR-10 calibration images) and the default `toolchain run` (its report.json), each in its own process with
PYTHONPATH = the tree. Wall times (keys ending in `seconds` or `_s`, `timing`, a manifest's creation time) are
dropped and the temporary folder's path reads <work>; everything else, key order included, is kept as JSON text. About 10 minutes per tree on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
W4A4 = ["--w-bits", "4", "--a-bits", "4"]
CONFIGS: dict[str, list[str]] = {
    "W8A8": [],
    "W4A4 pdquant fast": [*W4A4, "--reconstruct", "pdquant", "--preset", "fast"],
    "target openvino": ["--target", "openvino"],
    "target tensorrt": ["--target", "tensorrt"],
    "target qnn W8A16": ["--target", "qnn", "--a-bits", "16"],
    "weight bits budget 5": ["--weight-bits-budget", "5"],
    "activation bits budget 6": ["--a-bits-budget", "6"],
    "W4A4 first-last-8bit": [*W4A4, "--first-last-8bit"],
    "batch 8": ["--batch", "8"],
    "real CIFAR-10 images": ["--calib", "{shared}/datasets/cifar10-train-jpg.tar.gz", "--calib-limit", "64"],
}
_TIMING_KEYS = {"timing", "created", "created_at"}


def _toolchain(code: Path, args: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-m", "toolchain.cli", *args], env=env, capture_output=True, text=True,
                          cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(f"toolchain {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def without_timings(value: Any) -> Any:
    """The report with every wall time removed (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items()
                if not (k.endswith("seconds") or k.endswith("_s") or k in _TIMING_KEYS)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def _portable(report: Any, work: Path) -> str:
    """The report as JSON text with the temporary folder's path (the model's and the set's location) as <work>."""
    return json.dumps(report).replace(str(work), "<work>")


def make(code: Path, shared: Path, work: Path) -> dict[str, str]:
    """Each configuration's report without timings, as JSON text (key order kept)."""
    model, calib = work / "resnet20.onnx", work / "dgh64.npz"
    _toolchain(code, ["export", "resnet20_cifar10", "--weights", str(shared / "weights" / "resnet20-12fca82f.th"),
                      "-o", str(model)], work)
    _toolchain(code, ["generate", str(model), "--method", "dgh", "--preset", "fast", "-n", "64", "--seed", "0",
                      "-o", str(calib)], work)
    reports = {}
    for i, (name, args) in enumerate(CONFIGS.items()):
        out = work / f"q{i}.onnx"
        args = [a.format(shared=shared) for a in args]
        calib_args = [] if "--calib" in args else ["--calib", str(calib)]
        _toolchain(code, ["quantize", str(model), *calib_args, *args, "-o", str(out), "-q"], work)
        reports[name] = _portable(without_timings(json.loads(out.with_name(f"q{i}.report.json").read_text())), work)
        print(f"{name}: done", file=sys.stderr)
    _toolchain(code, ["run", "--run-dir", str(work / "run"), "--quiet"], work)
    reports["default run report.json"] = _portable(without_timings(json.loads((work / "run" / "report.json").read_text())), work)
    return reports


def compare(old: dict[str, str], new: dict[str, str]) -> int:
    differ = [name for name in old if old[name] != new.get(name)]
    for name in old:
        print(f"{'identical' if name not in differ else 'DIFFERENT'}: {name}")
    return 1 if differ or old.keys() != new.keys() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="the code tree to run (default: this checkout)")
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("TOOLCHAIN_SHARED", ROOT.parent / "shared")))
    parser.add_argument("--out", type=Path, help="where to write the reports (JSON)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        return compare(*(json.loads(p.read_text()) for p in args.compare))
    if args.out is None:
        parser.error("give --out (or --compare OLD NEW)")
    with tempfile.TemporaryDirectory() as work:
        reports = make(args.code.resolve(), args.shared.resolve(), Path(work))
    args.out.write_text(json.dumps(reports, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
