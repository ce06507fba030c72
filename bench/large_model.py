"""A model over 2 GB through the CLI: export -> quantize -> evaluate, with external data, timed, peak memory measured.

Usage:
    python bench/large_model.py                              # 2.15 GB of FP32 weights (protobuf's limit is 2 GiB)
    python bench/large_model.py --features 8192 --out /tmp/large   # a small variant, for a quick check

The network is Conv(3->32, 3x3) -> BN -> ReLU -> Flatten -> Linear(32*32*32 -> FEATURES) on 32x32 inputs:
with FEATURES = 16400 the Linear alone holds 537 M parameters. Random weights (the point is the file
format and the memory, not accuracy), so evaluation reports top-1 agreement of the W8A8 model with FP32
on random images. Each stage is a separate `toolchain` process; its wall time and peak resident memory
(ru_maxrss) are recorded. Writes bench/results/large_model.json and .md; the model files go to --out
(default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from measure import run_stage
from torch import nn

from toolchain.core.cpu import has_vnni

ROOT = Path(__file__).resolve().parents[1]
FEATURES_ENV = "LARGE_MODEL_FEATURES"


class WideNet(nn.Module):
    """Conv-BN-ReLU stem and one very wide classifier: a model whose size is almost all one Gemm weight."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 32 * 32, features)
        self.preprocessing = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "input_size": [32, 32]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def wide_net() -> nn.Module:
    """The factory `toolchain export large_model:wide_net` calls (FEATURES from the environment)."""
    torch.manual_seed(0)
    return WideNet(int(os.environ.get(FEATURES_ENV, "16400")))


def _sizes(folder: Path, name: str) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.name.startswith(name)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=16400)
    parser.add_argument("--out", type=Path, help="Keep the model files here (default: a temporary folder).")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "large_model")
    parser.add_argument("--reuse-export", action="store_true", help="Keep an exported model already in --out.")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="large-model-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, FEATURES_ENV: str(args.features), "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), str(ROOT)])}
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", inputs=rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
    np.savez(folder / "images.npz", images=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 64))
    model, qdq = folder / "wide.onnx", folder / "wide_w8a8.onnx"
    stages = []
    try:
        if not (args.reuse_export and model.exists()):
            stages.append(run_stage("export", ["export", "large_model:wide_net", "-o", str(model), "--overwrite"], env))
        # on a CPU without VNNI the integer kernels saturate with full-range weights (the toolchain says so): reduce them
        reduce = ["--reduce-range"] if has_vnni() is False else []
        stages.append(run_stage("quantize W8A8", ["quantize", str(model), "--calib", str(folder / "calib.npz"), "-o", str(qdq),
                                             "--overwrite", *reduce], env))
        stages.append(run_stage("evaluate", ["evaluate", str(qdq), "--data", str(folder / "images.npz"), "--reference",
                                        str(model), "--json"], env))
        evaluation = json.loads(stages[-1]["stdout"].splitlines()[-1])
        parameters = sum(p.numel() for p in WideNet(args.features).parameters())
        record = {"features": args.features, "parameters": parameters, "fp32_weight_bytes": parameters * 4,
                  "files": {**_sizes(folder, "wide.onnx"), **_sizes(folder, "wide_w8a8")},
                  "agreement_w8a8_vs_fp32": evaluation.get("agreement"), "reduce_range": bool(reduce),
                  "output_sqnr_db": json.loads((folder / "wide_w8a8.report.json").read_text())["summary"]["output_sqnr_db"],
                  "stages": stages,
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__}
    finally:
        if args.out is None:
            shutil.rmtree(folder, ignore_errors=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# A model over 2 GB, export -> quantize -> evaluate", "",
             f"`python bench/large_model.py --features {args.features}` ({record['machine']}): "
             f"{parameters / 1e6:.0f} M parameters, {record['fp32_weight_bytes'] / 1e9:.2f} GB of FP32 weights "
             "(protobuf cannot hold more than 2 GiB = 2,147,483,648 bytes in one file).", "",
             "| file | bytes |", "|---|---|"]
    lines += [f"| `{name}` | {size:,} |" for name, size in record["files"].items()]
    lines += ["", "| stage | wall time (s) | peak resident memory (GB) |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['seconds']} | {s['peak_rss_gb']:.1f} |" for s in stages]
    lines += ["", f"W8A8{' (--reduce-range: this CPU has no VNNI)' if record['reduce_range'] else ''}: output SQNR against "
              f"FP32 {record['output_sqnr_db']:.1f} dB on the 16 calibration inputs; top-1 agreement with FP32 on 64 random "
              f"images {record['agreement_w8a8_vs_fp32']:.3f} (random weights: {args.features} nearly tied logits, so "
              "agreement says little here; the point is that every stage runs)."]
    args.results.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
