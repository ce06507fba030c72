"""Mixed precision under a weight budget vs uniform bits, zero-shot (DGH data, pdquant default, A4): ResNet-20 and
the trained ShuffleNetV2.

Usage:
    python bench/mixed_precision.py --seeds 0 1 2 --points budget:3.0@2348:compensated uniform:3   # one process per core
    python bench/mixed_precision.py --seeds 0 --points uniform:2 uniform:4 uniform:8 academic:2 budget:2.25@2348:compensated
    python bench/mixed_precision.py --model shufflenet_v2_cifar10 --seeds 0 --points budget:2.5@2348:compensated
    python bench/mixed_precision.py --render-only

A point is `uniform:B` (every layer's weights at B bits), `academic:B` (B bits, first and last layer at 8 and
the network output in float: the papers' setting) or `budget:B[@CHOICES]` (average B weight bits, each layer's
bits from {2, 4, 8}, or the digits of CHOICES, e.g. @2348, chosen by quant.bitalloc; a `:compensated` suffix: the
sensitivity rounds with compensation, the toolchain's default; a `/pd10` suffix on any point: pdquant's PD weight 10);
`act:B` (weights at 4 bits, each activation tensor's bits from {4, 8} so that their mean over all activation values
is at most B: `--a-bits-budget`; act:4 and act:8 are uniform A4 and A8). Every point: 256 DGH images (default preset, the row's seed;
cached in --work), activations at 4 bits, every layer quantized (first/last and the output, except
academic), MSE calibrator then pdquant `default`, top-1 on the 10,000 CIFAR-10 test images in onnxruntime.
Rows merge into bench/results/mixed_precision.json as they finish, so points can run in separate
processes (pin each to a core with --threads 1: `taskset -c 0 python bench/mixed_precision.py ...`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from toolchain import api
from toolchain.core.paths import shared_dir
from toolchain.quantize.config import ActivationBudget, BitBudget, QuantConfig
from toolchain.quantize.reconstruct import ReconConfig

RESULTS = Path(__file__).resolve().parent / "results"
FP32 = {"resnet20_cifar10": 0.8103, "shufflenet_v2_cifar10": 0.8198}  # bench/results/{pdquant,trained_families}.md
WEIGHTS = {"resnet20_cifar10": "resnet20-12fca82f.th"}  # in ../shared/weights; the trained models' are the zoo's
TITLES = {"resnet20_cifar10": "ResNet-20", "shufflenet_v2_cifar10": "ShuffleNetV2 (trained here, bench/trained_families.py)"}


def point_config(point: str) -> QuantConfig:
    point, _, pd_weight = point.partition("/pd")  # ".../pd10": pdquant's PD weight fixed (default: by weight bits)
    kind, _, value = point.partition(":")
    recon = ReconConfig.preset("pdquant", "default", pd_weight=float(pd_weight) if pd_weight else None)
    if kind == "uniform":
        return QuantConfig(w_bits=int(value), a_bits=4, reconstruction=recon)
    if kind == "academic":
        return QuantConfig(w_bits=int(value), a_bits=4, first_last_8bit=True, reconstruction=recon)
    if kind == "budget":  # budget:B, budget:B@2348 (candidates 2, 3, 4, 8; default 2, 4, 8), budget:B@2348:compensated
        value, _, rounding = value.partition(":")
        bits, _, choices = value.partition("@")
        budget = BitBudget(average_bits=float(bits), choices=tuple(int(c) for c in choices) if choices else (2, 4, 8),
                           rounding=rounding or "nearest")
        return QuantConfig(a_bits=4, bit_budget=budget, reconstruction=recon)
    if kind == "act":  # act:B: uniform 4-bit weights, activations 4 or 8 bits per tensor, B bits per value on average
        return QuantConfig(w_bits=4, a_bits=4, act_budget=ActivationBudget(average_bits=float(value), choices=(4, 8)),
                           reconstruction=recon)
    raise SystemExit(f"unknown point {point!r}: uniform:B, academic:B, budget:B[@CHOICES] or act:B")


def calibration(model: str, onnx_path: Path, seed: int, work: Path) -> Path:
    path = work / f"{model}_dgh256_s{seed}.npz"
    if not path.exists():
        api.generate_calibration(onnx_path, "dgh", 256, path, seed=seed, progress=False)
    return path


def run(args: argparse.Namespace) -> None:
    from toolchain.core.cpu import has_vnni
    from toolchain.core.execution import Execution

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    execution = Execution(threads=args.threads)
    test = shared_dir() / "datasets" / "cifar10-test-jpg.tar.gz"
    onnx_path = work / f"{args.model}.onnx"
    if not onnx_path.exists():
        weights = shared_dir() / "weights" / WEIGHTS[args.model] if args.model in WEIGHTS else None
        api.export_model(args.model, onnx_path, weights)
    for seed in args.seeds:
        calib = calibration(args.model, onnx_path, seed, work)
        for point in args.points:
            out = work / f"{args.model}_{point.replace(':', '').replace('@', 'c').replace('/', '')}_s{seed}.onnx"
            started = time.perf_counter()
            outcome = api.quantize_model(onnx_path, calib, out, point_config(point), seed=seed, overwrite=True,
                                         progress=False, execution=execution)
            seconds = time.perf_counter() - started
            metrics = api.evaluate_model(out, test, threads=execution.thread_count, progress=False)
            report = outcome.report
            mixed = report.get("mixed_precision")
            layers = [layer for layer in report["layers"] if layer.get("weight_bits")]
            params = _weight_params(onnx_path, report)
            total = sum(params.values())
            bits = sum(params[layer["node"]] * layer["weight_bits"] for layer in layers) / total
            row = {"model": args.model, "point": point, "seed": seed, "top1": metrics.top1, "average_bits": round(bits, 4),
                   "weight_bytes": round(bits * total / 8), "layer_bits": [layer["weight_bits"] for layer in layers],
                   "quantize_s": round(seconds, 1), "threads": execution.thread_count, "cpu_vnni": has_vnni(),
                   "machine": platform.platform()}
            mixed_act = report.get("mixed_precision_activations")
            if mixed_act:
                row.update(average_activation_bits=mixed_act["average_bits"], act_predicted_kl=mixed_act["predicted_kl"],
                           act_measured_kl=mixed_act["measured_kl"], sensitivity_s=mixed_act["sensitivity_seconds"],
                           tensor_bits=[t["bits"] for t in mixed_act["tensors"]],
                           tensor_elements=[t["elements"] for t in mixed_act["tensors"]])
            if mixed:
                row.update(predicted_kl=mixed["predicted_kl"], measured_kl=mixed["measured_kl"],
                           sensitivity_s=mixed["sensitivity_seconds"], sensitivity=[layer["kl"] for layer in mixed["layers"]])
            merge(RESULTS / "mixed_precision.json", row)
            print(f"{args.model} {point} seed {seed}: top-1 {metrics.top1:.4f}, {bits:.3f} bits, {seconds:.0f} s", flush=True)
    render(RESULTS / "mixed_precision.json")


def _weight_params(onnx_path: Path, report: dict) -> dict[str, int]:
    """Parameters of each weighted layer (node name -> count), from the QDQ report's per-channel scales and the
    float model's weight shapes matched in layer order."""
    import numpy as np
    import onnx

    from toolchain.quantize.config import QuantConfig as _Q
    from toolchain.quantize.fold.prepare import prepare_float_model

    folded, _ = prepare_float_model(onnx.load(str(onnx_path)), _Q())
    inits = {t.name: t for t in folded.graph.initializer}
    nodes = {n.name: n for n in folded.graph.node}
    return {layer["node"]: int(np.prod(inits[nodes[layer["node"]].input[1]].dims))
            for layer in report["layers"] if layer.get("weight_bits")}


def merge(path: Path, row: dict) -> None:
    """Replace or add `row` in the JSON list at `path`, under a lock (two pinned processes write it)."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = json.loads(path.read_text()) if path.exists() else []
        rows = [r for r in rows if (r["model"], r["point"], r["seed"]) != (row["model"], row["point"], row["seed"])]
        rows.append(row)
        rows.sort(key=lambda r: (r["model"], r["point"], r["seed"]))
        path.write_text(json.dumps(rows, indent=1) + "\n")


def render(path: Path) -> None:
    rows = json.loads(path.read_text()) if path.exists() else []
    lines = ["# Mixed precision vs uniform bits (zero-shot DGH 256, pdquant default, A4)", "",
             "Every layer quantized (first/last and output) except `academic` (first/last weights at 8 bits, output in "
             "float). Top-1 on the 10,000 CIFAR-10 test images in onnxruntime. `budget:B`: average B weight "
             "bits over all weights, each layer's bits from {2, 4, 8} (`@2348`: from {2, 3, 4, 8}) by measured KL "
             "sensitivity and an exact knapsack; the sensitivity rounds each layer to nearest, or `:compensated` by its "
             "input Hessian (the toolchain's default). Each row ran with 1 thread pinned to a core, the other core "
             "running another row (sensitivity s and quantize s are on that core).", ""]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if not row["point"].startswith("act:"):
            groups.setdefault((row["model"], row["point"]), []).append(row)
    for model in sorted({m for m, _ in groups}, key=lambda m: list(FP32).index(m)):
        mine = {key: group for key, group in groups.items() if key[0] == model}
        lines += [f"## {TITLES[model]}: FP32 {100 * FP32[model]:.2f} %", "",
                  "| point | average weight bits | weight KiB | top-1 % (seeds) | mean ± sd | KL predicted / measured | sensitivity s | quantize s |",
                  "|---|---:|---:|---|---:|---:|---:|---:|"]
        for (_, point), group in sorted(mine.items(), key=lambda g: (g[1][0]["average_bits"], g[0][1])):
            tops = [100 * r["top1"] for r in group]
            spread = f"{statistics.mean(tops):.2f} ± {statistics.stdev(tops):.2f}" if len(tops) > 1 else f"{tops[0]:.2f}"
            first = group[0]
            kl = (f"{first['predicted_kl']:.3g} / {first['measured_kl']:.3g}" if "predicted_kl" in first else "–")
            lines.append(f"| {point} | {first['average_bits']:.3f} | {first['weight_bytes'] / 1024:.1f} | "
                         + " / ".join(f"{t:.2f} (s{r['seed']})" for t, r in zip(tops, group))
                         + f" | {spread} | {kl} | {first.get('sensitivity_s', '–')} | {first['quantize_s']:.0f} |")
        lines += ["", f"Bits per layer (graph order) of the first seed's mixed models; plot: `{_plot_name(model)}`", ""]
        for (_, point), group in sorted(mine.items()):
            if point.startswith("budget"):
                lines.append(f"- {point}: {' '.join(map(str, group[0]['layer_bits']))}")
        lines.append("")
        _plot(model, mine, path.with_name(_plot_name(model)))
    lines += _activation_section(rows, path)
    path.with_suffix(".md").write_text("\n".join(lines))


def _activation_section(rows: list[dict], path: Path) -> list[str]:
    """The `act:B` rows: W4, per-tensor activation bits from {4, 8} under --a-bits-budget B."""
    acts = [r for r in rows if r["point"].startswith("act:")]
    if not acts:
        return []
    lines = []
    for model in sorted({r["model"] for r in acts}, key=lambda m: list(FP32).index(m)):
        groups: dict[str, list[dict]] = {}
        for row in (r for r in acts if r["model"] == model):
            groups.setdefault(row["point"], []).append(row)
        lines += [f"## {TITLES[model]}, activation budgets: W4, each tensor 4 or 8 bits (`--a-bits-budget`)", "",
                  "| point | average activation bits | top-1 % (seeds) | mean ± sd | KL predicted / measured | sensitivity s | quantize s |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        ordered = sorted(groups.items(), key=lambda g: g[1][0]["average_activation_bits"])
        for point, group in ordered:
            tops = [100 * r["top1"] for r in group]
            spread = f"{statistics.mean(tops):.2f} ± {statistics.stdev(tops):.2f}" if len(tops) > 1 else f"{tops[0]:.2f}"
            first = group[0]
            lines.append(f"| {point} | {first['average_activation_bits']:.3f} | "
                         + " / ".join(f"{t:.2f} (s{r['seed']})" for t, r in zip(tops, group))
                         + f" | {spread} | {first['act_predicted_kl']:.3g} / {first['act_measured_kl']:.3g} | "
                         f"{first['sensitivity_s']} | {first['quantize_s']:.0f} |")
        lines += ["", "Bits per activation tensor (graph order, values per image in brackets for the 8-bit ones) "
                  f"of the first seed; plot: `mixed_precision_activations_{model}.png`", ""]
        for point, group in ordered:
            first = group[0]
            wide = [f"{i}[{e}]" for i, (b, e) in enumerate(zip(first["tensor_bits"], first["tensor_elements"])) if b == 8]
            lines.append(f"- {point}: {' '.join(map(str, first['tensor_bits']))} (8-bit: {', '.join(wide) or 'none'})")
        lines.append("")
        uniform_a4 = [100 * r["top1"] for r in rows if r["model"] == model and r["point"] == "uniform:4"]
        _plot_activations(model, ordered, uniform_a4, path.with_name(f"mixed_precision_activations_{model}.png"))
    return lines


def _plot_activations(model: str, ordered: list, uniform_a4: list[float], path: Path) -> None:
    plt = _pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    xs = [g[0]["average_activation_bits"] for _, g in ordered]
    ys = [statistics.mean(100 * r["top1"] for r in g) for _, g in ordered]
    axis.plot(xs, ys, "o-", label="W4, activations 4 or 8 bits per tensor (act:8 = uniform A8)")
    if uniform_a4:  # the weights' uniform W4 row is W4A4 by the same recipe
        axis.plot([4.0], [statistics.mean(uniform_a4)], "s", label="uniform W4A4")
    _finish(plt, figure, axis, model, "average activation bits (per value, all quantized tensors)", "top-1 %",
            f"{TITLES[model].split(' (')[0]} W4A? zero-shot: activation budget", path)


def _plot_name(model: str) -> str:
    return "mixed_precision.png" if model == "resnet20_cifar10" else f"mixed_precision_{model}.png"


def _plot(model: str, groups: dict, path: Path) -> None:
    plt = _pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    styles = {"mixed248": ("o-", "mixed, {2, 4, 8}, nearest"), "mixed2348": ("D-", "mixed, {2, 3, 4, 8}, nearest"),
              "mixed2348c": ("*-", "mixed, {2, 3, 4, 8}, compensated (default)"),
              "uniform": ("s", "uniform"), "academic": ("^", "academic (first/last 8-bit)")}

    def series(point: str) -> str:
        if "/pd" in point:
            return "ablation"  # a fixed PD weight: in the table, not on the curve
        if point.startswith("budget"):
            return ("mixed2348c" if point.endswith(":compensated") else "mixed2348" if point.endswith("@2348")
                    else "mixed248")
        return point.partition(":")[0]

    for kind, (marker, label) in styles.items():
        points = sorted((g[0]["average_bits"], statistics.mean(100 * r["top1"] for r in g))
                        for (m, p), g in groups.items() if series(p) == kind)
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], marker, label=label)
    _finish(plt, figure, axis, model, "average weight bits (size / parameters)", "top-1 % (A4)",
            f"{TITLES[model].split(' (')[0]} W?A4 zero-shot: mixed precision vs uniform", path)


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or None where matplotlib is not installed (no plot then)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _finish(plt, figure, axis, model: str, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    """The FP32 line, labels, legend and grid; the figure saved to `path` and closed."""
    axis.axhline(100 * FP32[model], color="grey", linestyle=":", label="FP32")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20_cifar10", choices=sorted(FP32))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--points", nargs="+", default=["budget:3.0", "budget:2.5"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", default="/work/bench_work/mixed", help="exported models, DGH sets, outputs")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if args.render_only:
        render(RESULTS / "mixed_precision.json")
    else:
        run(args)


if __name__ == "__main__":
    main()
