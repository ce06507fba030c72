"""The two CIFAR-10 family models trained here (MobileNetV3-style, ShuffleNetV2-style): zero-shot PTQ, all layers low-bit.

Usage:
    python bench/trained_families.py --suite main --seeds 0 1 2      # DGH + pdquant default: W8A8, W4A8, W4A4
    python bench/trained_families.py --suite ort                     # onnxruntime quantize_static, 512 real images
    python bench/trained_families.py --suite ablation --seeds 0      # W4A4 pdquant on real / bns / fdda / gaussian data
    python bench/trained_families.py --suite ablation --seeds 1 2 --data bns
    python bench/trained_families.py --suite main --models mobilenet_v3_cifar10 --bits W4A4
    python bench/trained_families.py --render-only

Models: `toolchain export mobilenet_v3_cifar10` / `shufflenet_v2_cifar10` (weights from models/train_cifar.py).
Ours: 256 images from `toolchain generate` (default preset, the row's seed), `toolchain quantize` with every
layer low-bit (first, last and the network output), MSE calibrator, pdquant `default`; 8-bit weights in 7
bits on CPUs without VNNI (onnxruntime's u8s8 kernels saturate otherwise, see README). onnxruntime:
`quantize_static` QDQ, per-channel, MinMax, 512 real training images, on the same BN-folded float model.
Every model is evaluated in onnxruntime on the 10,000 CIFAR-10 JPEG test images. Rows merge into
bench/results/trained_families.json as they finish.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from toolchain import api
from toolchain.core.cpu import has_vnni
from toolchain.core.paths import shared_dir
from toolchain.data.calibration import sample_calibration
from toolchain.errors import ToolchainError
from toolchain.onnxio.preprocessing import read_preprocessing
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.reconstruct import ReconConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantizer_vs_ort import prepare_for_ort, quantize_ort

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mobilenet_v3_cifar10", "shufflenet_v2_cifar10")
BITS = ("W8A8", "W4A8", "W4A4")
ABLATION_DATA = ("real", "bns", "fdda", "gaussian")


def key(row: dict) -> tuple:
    return row["model"], row["who"], row["data"], row["seed"], row["bits"]


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


def save(path: Path, rows: list[dict]) -> None:
    machine = f"{platform.processor() or platform.machine()}, VNNI: {has_vnni()}"
    path.write_text(json.dumps({"machine": machine, "rows": sorted(rows, key=key)}, indent=1) + "\n")


def jobs(suite: str, seeds: list[int], models: list[str], bits: list[str],
         data_kinds: list[str]) -> list[tuple[str, str, str, int, str]]:
    """(model, who, data, seed, bits) in the order they run."""
    out = []
    for model in models:
        out.append((model, "fp32", "-", 0, "FP32"))
        if suite == "main":
            out += [(model, "ours", "dgh", s, b) for b in bits for s in seeds]
        elif suite == "ort":
            out += [(model, "onnxruntime", "real", 0, b) for b in bits]
        elif suite == "ablation":
            out += [(model, "ours", data, s, "W4A4") for data in data_kinds for s in seeds]
    return out


def run(args: argparse.Namespace) -> None:
    shared = Path(args.shared) if args.shared else shared_dir()
    train, test = shared / "datasets" / "cifar10-train-jpg.tar.gz", shared / "datasets" / "cifar10-test-jpg.tar.gz"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "trained_families.json"
    done = {key(r) for r in load(out)}
    for model_name, who, data, seed, bits in jobs(args.suite, args.seeds, args.models, args.bits, args.data):
        row_key = (model_name, who, data, seed, bits)
        if row_key in done and not args.redo:
            continue
        fp32 = work / f"{model_name}.onnx"
        if not fp32.exists():
            api.export_model(model_name, fp32)
        started = time.perf_counter()
        row = {"model": model_name, "who": who, "data": data, "seed": seed, "bits": bits}
        if who == "fp32":
            path = fp32
        elif who == "onnxruntime":
            w_bits, a_bits = int(bits[1]), int(bits[3])
            folded = work / f"{model_name}_folded.onnx"
            if not folded.exists():
                prepare_for_ort(fp32, folded, "toolchain")
            real = sample_calibration(train, read_preprocessing(api.load_model(fp32)), 512, seed=0).inputs
            path = work / f"{model_name}_ort_{bits}.onnx"
            quantize_ort(folded, path, real, w_bits, a_bits, a_bits, "minmax")
        else:
            w_bits, a_bits = int(bits[1]), int(bits[3])
            calib = work / f"{model_name}_{data}_n{args.n}_s{seed}.npz"
            if not calib.exists():
                generation_started = time.perf_counter()
                api.generate_calibration(fp32, data, args.n, calib, seed=seed, data=train if data in ("real", "fdda") else None,
                                         progress=False)
                (work / f"{calib.name}.seconds").write_text(f"{time.perf_counter() - generation_started:.1f}")
            row["generation_s"] = float((work / f"{calib.name}.seconds").read_text())
            path = work / f"{model_name}_{data}_s{seed}_{bits}.onnx"
            config = QuantConfig(w_bits=w_bits, a_bits=a_bits, reduce_range=w_bits == 8 and has_vnni() is False,
                                 reconstruction=ReconConfig.preset("pdquant", args.preset, seed=seed))
            started = time.perf_counter()  # quantize alone: generation is timed above
            outcome = api.quantize_model(fp32, calib, path, config, overwrite=True, progress=False)
            row["quantize_s"] = round(time.perf_counter() - started, 1)
            row["ops_coverage"] = outcome.report["fusion"]["coverage"]
            row["units"] = len(outcome.report["reconstruction"].get("units", []))
        try:
            row["top1"] = api.evaluate_model(path, test, progress=False).top1
        except ToolchainError as err:  # quantize_static's own output may not load (measured: ShuffleNetV2 W4A4)
            row["top1"], row["error"] = None, str(err)[:300]
        print(json.dumps(row), flush=True)
        rows = [r for r in load(out) if key(r) != key(row)] + [row]
        save(out, rows)
    render(out)


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.2f} (1 seed)"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f} ({len(values)} seeds)"


def render(path: Path) -> None:
    rows = load(path)

    def pick(**match) -> list[dict]:
        return [r for r in rows if all(r.get(k) == v for k, v in match.items())]

    lines = ["# Trained family models: zero-shot PTQ with every layer low-bit (CIFAR-10, onnxruntime-evaluated)", "",
             "Ours: 256 DGH images (`default` preset), pdquant `default`, MSE calibrator, first/last layer and output "
             "quantized too; onnxruntime: `quantize_static` (QDQ, per-channel, MinMax) with 512 real training images. "
             "Top-1 on the 10,000 CIFAR-10 JPEG test images. Source: `bench/trained_families.py`.", ""]
    for model in MODELS:
        fp32 = pick(model=model, who="fp32")
        if not fp32:
            continue
        base = fp32[0]["top1"]
        lines += [f"## {model} (FP32 {100 * base:.2f} %)", "",
                  "| bits | ours: DGH + pdquant | drop vs FP32 | onnxruntime quantize_static, 512 real | quantize s |",
                  "|---|---:|---:|---:|---:|"]
        for bits in BITS:
            ours = [r["top1"] for r in pick(model=model, who="ours", data="dgh", bits=bits)]
            ort_rows = pick(model=model, who="onnxruntime", bits=bits)
            # A row with "timing_excluded" (the reason: another job shared the cores, or the time includes the
            # generation) keeps its accuracy; its time is left out.
            seconds = [r["quantize_s"] for r in pick(model=model, who="ours", data="dgh", bits=bits)
                       if not r.get("timing_excluded")]
            drop = f"{100 * (statistics.mean(ours) - base):+.2f}" if ours else "–"
            ort_text = ("does not load in onnxruntime" if ort_rows and ort_rows[0]["top1"] is None
                        else f"{100 * ort_rows[0]['top1']:.2f}" if ort_rows else "–")
            sec = f"{statistics.mean(seconds):.0f}" if seconds else "–"
            lines.append(f"| {bits} | {_mean_sd(ours)} | {drop} | {ort_text} | {sec} |")
        ablation = [(data, [r["top1"] for r in pick(model=model, who="ours", data=data, bits="W4A4")])
                    for data in ("dgh", *ABLATION_DATA)]
        if any(values for data, values in ablation if data != "dgh"):
            lines += ["", "Calibration data at W4A4 (pdquant default):", "", "| data | top-1 % |", "|---|---:|"]
            lines += [f"| {data} | {_mean_sd(values)} |" for data, values in ablation if values]
        lines.append("")
    (RESULTS / "trained_families.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=["main", "ort", "ablation"], default="main")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--bits", nargs="*", default=list(BITS))
    parser.add_argument("--data", nargs="*", default=list(ABLATION_DATA), choices=ABLATION_DATA,
                        help="calibration data of the ablation suite")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--work", default="/tmp/trained_families")
    parser.add_argument("--shared", default=None)
    parser.add_argument("--redo", action="store_true")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if args.render_only:
        render(RESULTS / "trained_families.json")
    else:
        run(args)


if __name__ == "__main__":
    main()
