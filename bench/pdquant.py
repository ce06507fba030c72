"""PD-Quant / BRECQ reconstruction on ResNet-20 (and ResNet-56), zero-shot: accuracy, ablations, wall time.

Usage:
    python bench/pdquant.py --suite main --seeds 0 1 2        # DGH data, pdquant default: W4A4 W8A8 W4A8 (+W2A4 W2A2, seed 0)
    python bench/pdquant.py --suite ablation --seeds 0        # none / brecq / pdquant x real / dgh / fdda / gaussian, W4A4 + W2A4; bns W4A4
    python bench/pdquant.py --suite resnet56 --seeds 0        # ResNet-56 W4A4: none / brecq / pdquant on DGH data
    python bench/pdquant.py --suite sweep --seeds 0           # pdquant W4A4 at 100 iterations per unit (default: 300)
    python bench/pdquant.py --suite budget --seeds 0 --n 1024 --iterations 1000 3000   # what budget buys (images x iterations)
    python bench/pdquant.py --suite budget --seeds 0 --n 1024 --iterations 3000 --resume  # continue a stopped row
    python bench/pdquant.py --suite ingredients --seeds 0     # pdquant without PD / learned step sizes / DC, W2A4 then W4A4
    python bench/pdquant.py --suite ablation --seeds 1 2 --data bns --method pdquant --bits W4A4   # a subset
    python bench/pdquant.py --suite datagen --seeds 0          # generation settings judged by pdquant W4A4
    python bench/pdquant.py --suite pdweight --seeds 0         # the PD term's weight at W2A4 and W4A4 (1 and 3; default 10)
    python bench/pdquant.py --render-only                     # rewrite the .md from the .json

Every row: calibration data generated with `toolchain.api.generate_calibration` (`default` preset, N
images, the row's seed; a data label `dgh@iterations=100` changes one generation setting, see
`generation_config`), quantized with every layer low-bit (first/last and the network output,
`toolchain.api.quantize_model`, MSE calibrator then the reconstruction), evaluated in onnxruntime on
the 10,000 CIFAR-10 JPEG test images. Rows are merged into bench/results/pdquant.json as they finish
(keyed by model, data, seed, method, bits, preset), so suites can run in separate processes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

from toolchain import api
from toolchain.core.paths import shared_dir
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.reconstruct import ReconConfig

RESULTS = Path(__file__).resolve().parent / "results"
FP32 = {"resnet20": 0.8103, "resnet56": 0.8320}
WEIGHTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}


SWEEP_ITERATIONS = (100,)  # beside the default preset's 300
BUDGET_ITERATIONS = (300, 1000, 3000)  # the budget grid (with --n 256 and --n 1024): iterations per unit
PD_WEIGHTS = (1.0, 3.0)  # beside PD-Quant's 10
# Generation settings judged by pdquant W4A4 (beside the `default` presets of dgh and fdda)
DATAGEN_VARIANTS = ("dgh@iterations=100", "dgh@iterations=400", "dgh@augment.smoothing_sigma=0.5",
                    "dgh@output_weight=0.001", "fdda@combined")


def generation_config(label: str):
    """(method, GenerationConfig or None = the preset) for a data label: `METHOD[@KEY=VALUE,...]`.

    KEY is a GenerationConfig field or `augment.FIELD`; `combined` (fdda) adds DGH's joint statistics,
    input pseudo-layer and flip/smooth/crop augmentation to FDDA's class terms (methods.md section 7)."""
    from toolchain.generate.config import preset

    method, _, spec = label.partition("@")
    if not spec:
        return method, None
    config = preset("default", method)
    for item in spec.split(","):
        if item == "combined":
            config = replace(config, joint_statistics=True, input_layer=True, augment=preset("default", "dgh").augment)
            continue
        name, value = item.split("=")
        target, _, field_name = name.rpartition(".")
        holder = getattr(config, target) if target else config
        kind = type(getattr(holder, field_name or name))
        changed = replace(holder, **{field_name or name: kind(value)})
        config = replace(config, **{target: changed}) if target else changed
    return method, config


def suite_jobs(suite: str, seeds: list[int], iterations: list[int] | None = None) -> list[tuple]:
    """(model, data, seed, method, w_bits, a_bits[, iterations per unit]) in the order they run."""
    jobs: list[tuple] = []
    if suite == "main":
        for bits in ((4, 4), (8, 8), (4, 8)):
            jobs += [("resnet20", "dgh", s, "pdquant", *bits) for s in seeds]
        jobs += [("resnet20", "dgh", seeds[0], "pdquant", 2, 4), ("resnet20", "dgh", seeds[0], "pdquant", 2, 2)]
    elif suite == "ablation":
        for bits in ((4, 4), (2, 4)):
            for data in ("dgh", "real", "fdda", "gaussian"):
                # brecq on dgh and real shows what PD-Quant adds; the data columns compare none vs pdquant
                methods = ("none", "brecq", "pdquant") if data in ("dgh", "real") else ("none", "pdquant")
                jobs += [("resnet20", data, s, method, *bits) for method in methods for s in seeds]
        jobs += [("resnet20", "bns", s, method, 4, 4) for s in seeds for method in ("none", "pdquant")]
    elif suite == "sweep":
        jobs += [("resnet20", "dgh", s, "pdquant", 4, 4, {"iterations": it}) for s in seeds for it in SWEEP_ITERATIONS]
    elif suite == "budget":  # explicit iterations (even 300) so the grid's rows are keyed apart from the preset rows
        jobs += [("resnet20", "dgh", s, "pdquant", 4, 4, {"iterations": it}) for s in seeds
                 for it in (iterations or BUDGET_ITERATIONS)]
    elif suite == "ingredients":  # pdquant minus one ingredient at a time
        for bits in ((2, 4), (4, 4)):
            for off in ("prediction_difference", "learn_scales", "distribution_correction"):
                jobs += [("resnet20", "dgh", s, "pdquant", *bits, {off: False}) for s in seeds]
    elif suite == "pdweight":  # the PD term's weight (PD-Quant: 10) at 2- and 4-bit weights
        for bits in ((2, 4), (4, 4)):
            jobs += [("resnet20", "dgh", s, "pdquant", *bits, {"pd_weight": w}) for s in seeds for w in PD_WEIGHTS]
    elif suite == "datagen":
        jobs += [("resnet20", data, s, "pdquant", 4, 4) for s in seeds for data in DATAGEN_VARIANTS]
    elif suite == "resnet56":
        jobs += [("resnet56", "dgh", s, method, 4, 4) for s in seeds for method in ("none", "brecq", "pdquant")]
    return jobs


def _finished_units(qdq: Path) -> int:
    """Units a stopped run of this row left in its checkpoint (QDQ.onnx.ckpt), 0 when there is none."""
    checkpoint = qdq.with_name(qdq.name + ".ckpt")
    if not checkpoint.exists():
        return 0
    import torch

    return len(json.loads(torch.load(checkpoint, map_location="cpu", weights_only=True)["units"]))


def load_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


def key(row: dict) -> tuple:
    return (row["model"], row["data"], row["seed"], row["method"], row["bits"], row["preset"], row.get("n"))


def save(path: Path, rows: list[dict]) -> None:
    payload = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
               "fp32": FP32, "rows": sorted(rows, key=lambda r: key(r)[:5])}
    path.write_text(json.dumps(payload, indent=1) + "\n")


def run(args: argparse.Namespace) -> None:
    shared = shared_dir()
    train = shared / "datasets" / "cifar10-train-jpg.tar.gz"
    test = shared / "datasets" / "cifar10-test-jpg.tar.gz"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "pdquant.json"
    rows = load_rows(out)
    done = {key(r) for r in rows}
    for model_name, data, seed, method, w_bits, a_bits, *extra in suite_jobs(args.suite, args.seeds, args.iterations):
        if (args.data and data not in args.data) or (args.method and method not in args.method) or \
                (args.bits and f"W{w_bits}A{a_bits}" not in args.bits):
            continue
        overrides = extra[0] if extra else {}
        preset_label = args.preset + "".join(f"@{k}={v}" for k, v in overrides.items())
        row_key = (model_name, data, seed, method, f"W{w_bits}A{a_bits}", preset_label, args.n)
        if row_key in done and not args.redo:
            continue
        model = work / f"{model_name}.onnx"
        if not model.exists():
            api.export_model(f"{model_name}_cifar10", model, weights=shared / "weights" / WEIGHTS[model_name])
        calib = work / f"{model_name}_{data.replace('@', '_').replace('=', '-')}_n{args.n}_s{seed}.npz"
        generation_s = None
        if not calib.exists():
            started = time.perf_counter()
            method_name, generation = generation_config(data)
            api.generate_calibration(model, method_name, args.n, calib, seed=seed,
                                     data=train if method_name in ("real", "fdda") else None, progress=False,
                                     config=generation)
            generation_s = round(time.perf_counter() - started, 1)
            (work / f"{calib.name}.seconds").write_text(str(generation_s))
        elif (work / f"{calib.name}.seconds").exists():
            generation_s = float((work / f"{calib.name}.seconds").read_text())
        recon = replace(ReconConfig.preset(method, args.preset, seed=seed), **overrides)
        qdq = work / f"{model_name}_{data}_s{seed}_{method}_w{w_bits}a{a_bits}_{preset_label}.onnx"
        restored = _finished_units(qdq) if args.resume else 0
        started = time.perf_counter()
        outcome = api.quantize_model(model, calib, qdq, QuantConfig(w_bits=w_bits, a_bits=a_bits, reconstruction=recon),
                                     overwrite=True, progress=args.progress, resume=restored > 0)
        units = outcome.report["reconstruction"].get("units", [])
        # a resumed run: this run's wall time plus what the restored units took when they ran (the interrupted
        # unit's lost work is not counted, so the sum is the cost of an uninterrupted run)
        quantize_s = round(time.perf_counter() - started + sum(u["seconds"] for u in units[:restored]), 1)
        top1 = api.evaluate_model(qdq, test, limit=args.limit, progress=False).top1
        row = {"model": model_name, "data": data, "seed": seed, "method": method, "bits": f"W{w_bits}A{a_bits}",
               "preset": preset_label, "n": args.n, "top1": top1, "generation_s": generation_s, "quantize_s": quantize_s,
               "iterations_per_unit": recon.iterations if recon.enabled else 0, "units": len(units),
               "pd_weight": outcome.report["reconstruction"]["config"].get("pd_weight") if method == "pdquant" else None,
               "fusion_coverage": outcome.report["summary"]["fusion_coverage"], "test_images": args.limit or 10000,
               "torch_threads": args.threads, **({"resumed_units": restored} if restored else {})}
        print(json.dumps(row), flush=True)
        rows = [r for r in load_rows(out) if key(r) != key(row)] + [row]
        save(out, rows)
    render(out)


def _stats(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.2f} (1 seed)"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f} ({len(values)} seeds)"


def render(path: Path) -> None:
    rows = load_rows(path)

    def pick(**match) -> list[dict]:
        return [r for r in rows if all(r.get(k) == v for k, v in match.items())]

    lines = ["# Reconstruction (BRECQ / PD-Quant) — zero-shot, every layer low-bit, onnxruntime-evaluated", "",
             "Calibration: N generated images per seed (`toolchain generate`, `default` preset); quantizer: all layers "
             "including the first conv, the last Gemm and the network output; MSE calibrator, then the reconstruction "
             "(`default` preset unless stated); top-1 on the 10,000 CIFAR-10 JPEG test images in onnxruntime. "
             f"FP32: ResNet-20 {100 * FP32['resnet20']:.2f} %, ResNet-56 {100 * FP32['resnet56']:.2f} %. "
             "Machine: 2 CPU cores. Source: `bench/pdquant.py`.", ""]
    lines += ["## ResNet-20, DGH data (zero-shot), pdquant", "", "| bits | top-1 % (mean ± sd) | target | quantize s (per seed) |",
              "|---|---:|---:|---:|"]
    targets = {"W4A4": "≥ 78.03", "W8A8": "≥ 80.83", "W4A8": "≥ 79.53", "W2A4": "as measured", "W2A2": "as measured"}
    for bits, target in targets.items():
        sel = pick(model="resnet20", data="dgh", method="pdquant", bits=bits, preset="default")
        if sel:
            seconds = " / ".join(f"{r['quantize_s']:.0f}" for r in sorted(sel, key=lambda r: r["seed"]))
            lines.append(f"| {bits} | {_stats([r['top1'] for r in sel])} | {target} | {seconds} |")
    lines += ["", "## Ablation: what each ingredient buys (ResNet-20, seed 0: same images per data row)", "",
              "| bits | data | none (MSE) | brecq | pdquant |", "|---|---|---:|---:|---:|"]
    for bits in ("W4A4", "W2A4"):
        for data in ("real", "dgh", "fdda", "gaussian", "bns"):
            cells = [_stats([r["top1"] for r in pick(model="resnet20", data=data, method=m, bits=bits, preset="default", seed=0)])
                     for m in ("none", "brecq", "pdquant")]
            if any(c != "–" for c in cells):
                lines.append(f"| {bits} | {data} | " + " | ".join(cells) + " |")
    multi = [(data, pick(model="resnet20", data=data, method="pdquant", bits="W4A4", preset="default"))
             for data in ("real", "dgh", "bns", "fdda", "gaussian")]
    multi = [(data, sel) for data, sel in multi if len(sel) > 1]
    if multi:
        lines += ["", "## Calibration data under pdquant, W4A4, several seeds (data and reconstruction seeded together)", "",
                  "| data | top-1 % | per seed |", "|---|---:|---|"]
        for data, sel in multi:
            per_seed = " / ".join(f"{100 * r['top1']:.2f}" for r in sorted(sel, key=lambda r: r["seed"]))
            lines.append(f"| {data} | {_stats([r['top1'] for r in sel])} | {per_seed} |")
    w2 = [(m, pick(model="resnet20", data="dgh", method=m, bits="W2A4", preset="default")) for m in ("brecq", "pdquant")]
    if all(len(sel) > 1 for _, sel in w2):
        lines += ["", "## W2A4 on DGH data, several seeds: brecq vs pdquant (PD weight 1 below 4-bit weights)", "",
                  "| method | top-1 % | per seed |", "|---|---:|---|"]
        for m, sel in w2:
            per_seed = " / ".join(f"{100 * r['top1']:.2f}" for r in sorted(sel, key=lambda r: r["seed"]))
            lines.append(f"| {m} | {_stats([r['top1'] for r in sel])} | {per_seed} |")
    labels = {"default": "pdquant (all)", "default@prediction_difference=False": "without the PD term",
              "default@learn_scales=False": "without learned step sizes",
              "default@distribution_correction=False": "without distribution correction"}
    variants = [(label, text) for label, text in labels.items()
                if label == "default" or pick(model="resnet20", data="dgh", method="pdquant", seed=0, preset=label)]
    if len(variants) > 1:
        lines += ["", "## pdquant minus one ingredient (ResNet-20, DGH, seed 0)", "",
                  "Measured with the PD weight at 10 for both bit-widths (before its default became 1 below 4-bit "
                  "weights); the W2A4 `pdquant (all)` cell is that run.", "",
                  "| variant | W4A4 | W2A4 |", "|---|---:|---:|"]
        for label, text in variants:
            cells = [_stats([r["top1"] for r in pick(model="resnet20", data="dgh", method="pdquant", seed=0, bits=b,
                                                     preset="default@pd_weight=10.0" if (label, b) == ("default", "W2A4") else label)])
                     for b in ("W4A4", "W2A4")]
            lines.append(f"| {text} | " + " | ".join(cells) + " |")
    settings = [(data, pick(model="resnet20", data=data, method="pdquant", bits="W4A4", preset="default"))
                for data in ("dgh", *[d for d in DATAGEN_VARIANTS if d.startswith("dgh")], "fdda",
                             *[d for d in DATAGEN_VARIANTS if d.startswith("fdda")])]
    if any(data in DATAGEN_VARIANTS and sel for data, sel in settings):
        lines += ["", "## Generation settings judged by pdquant W4A4 (ResNet-20, 256 images)", "",
                  "`default` presets: dgh 200 iterations, smoothing sigma 1.0, output-stretching weight 3e-7; fdda 200 "
                  "iterations, per-batch statistics, no augmentation. Generation seconds: mean over the seeds shown.", "",
                  "| data | top-1 % | per seed | generation s |", "|---|---:|---|---:|"]
        for data, sel in settings:
            if sel:
                sel = sorted(sel, key=lambda r: r["seed"])
                per_seed = " / ".join(f"s{r['seed']} {100 * r['top1']:.2f}" for r in sel)
                gen = [r["generation_s"] for r in sel if r.get("generation_s")]
                gen_text = f"{statistics.mean(gen):.0f}" if gen else "–"
                lines.append(f"| {data} | {_stats([r['top1'] for r in sel])} | {per_seed} | {gen_text} |")
    weights = sorted([r for r in pick(model="resnet20", data="dgh", method="pdquant", seed=0)
                      if r["preset"] == "default" or "@pd_weight=" in r["preset"]],
                     key=lambda r: (r["bits"], r["preset"]))
    if any("@pd_weight=" in r["preset"] for r in weights):
        lines += ["", "## Weight of the PD term (ResNet-20, DGH, seed 0; PD-Quant's value: 10)", "",
                  "The default is 10 when every weight has 4 bits or more and 1 below (ReconConfig.pd_weight = None).", "",
                  "| bits | PD weight | top-1 % |", "|---|---:|---:|"]
        bits_with_variants = {r["bits"] for r in weights if "@pd_weight=" in r["preset"]}
        for r in weights:
            if r["bits"] in bits_with_variants:
                weight = f"{r.get('pd_weight', 10.0):g}" + (" (default)" if r["preset"] == "default" else "")
                lines.append(f"| {r['bits']} | {weight} | {100 * r['top1']:.2f} |")
    lines += ["", "## ResNet-56 W4A4, DGH data", "", "| method | top-1 % | quantize s |", "|---|---:|---:|"]
    for method in ("none", "brecq", "pdquant"):
        sel = pick(model="resnet56", data="dgh", method=method, bits="W4A4", preset="default")
        if sel:
            lines.append(f"| {method} | {_stats([r['top1'] for r in sel])} | {statistics.mean(r['quantize_s'] for r in sel):.0f} |")
    sweep = sorted([r for r in pick(model="resnet20", data="dgh", method="pdquant", bits="W4A4", seed=0)
                    if r["preset"] == "default" or "@iterations=" in r["preset"]], key=lambda r: r["iterations_per_unit"])
    if len(sweep) > 1:
        lines += ["", "## Iterations per unit (ResNet-20 W4A4, DGH, seed 0): accuracy per CPU-minute", "",
                  "| iterations per unit | top-1 % | quantize s |", "|---:|---:|---:|"]
        lines += [f"| {r['iterations_per_unit']} | {100 * r['top1']:.2f} | {r['quantize_s']:.0f} |" for r in sweep]
        lines += ["", "The 300-iteration run of seed 0 shared the CPU with the test suite; run alone, the same run "
                      "(identical result) took 193 s, and seeds 1 and 2 took 196 s and 195 s."]
    walls = [((r["generation_s"] or 0) + r["quantize_s"]) / 60 for r in pick(
        model="resnet20", data="dgh", method="pdquant", bits="W4A4", preset="default") if r["generation_s"]]
    if walls:
        lines += ["", "Wall time of the `default` presets for ResNet-20 W4A4 on 2 cores, data generation (256 DGH images) + "
                      f"quantization with pdquant, per seed: **{' / '.join(f'{w:.1f}' for w in walls)} min** (target < 20 min). "
                      "A run that shares the 2 cores with another torch process is several times slower (thread "
                      "oversubscription): compare runs made alone."]
    budget = sorted([r for r in pick(model="resnet20", data="dgh", method="pdquant", bits="W4A4")
                     if "@iterations=" in r["preset"] and "torch_threads" in r],  # the budget suite's rows only
                    key=lambda r: (r["n"], r["iterations_per_unit"], r["seed"]))
    if budget:
        lines += ["", "## What budget buys (ResNet-20 W4A4, DGH + pdquant; FP32 81.03 %)", "",
                  "Wall times are of this machine on the day they ran (see the README: it ran about 2.1x slower on "
                  "2026-12-01 than when the tables above were measured); `torch threads` empty = torch's default (2); "
                  "1 = pinned to one core (`taskset -c K`) while another 1-thread row ran on the other core.", "",
                  "| images | iterations per unit | seed | top-1 % | generation s | quantize s | torch threads |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['n']} | {r['iterations_per_unit']} | {r['seed']} | {100 * r['top1']:.2f} | {r['generation_s'] or '–'} | "
                  f"{r['quantize_s']:.0f} | {r.get('torch_threads') or ''} |" for r in budget]
        points: dict[tuple, list[float]] = {}
        for r in budget:
            points.setdefault((r["n"], r["iterations_per_unit"]), []).append(100 * r["top1"])
        lines += [f"\n{n} images x {it} iterations per unit over {len(v)} seeds: **{_stats([x / 100 for x in v])}** "
                  f"({' / '.join(f'{x:.2f}' for x in v)}; preset `thorough` with {n} DGH images)."
                  for (n, it), v in points.items() if len(v) > 1]
        later = [r for r in budget if r["seed"] != 0]
        if later:  # the other seeds ran in a later session, on a machine of the same size but a faster CPU
            lines += ["Seeds other than 0 ran in a later session on another machine of the same size (2 cores, with "
                      "AVX-512 VNNI): quantize s " + ", ".join(f"{r['quantize_s']:.0f} (seed {r['seed']}, {r['n']} x "
                                                                f"{r['iterations_per_unit']})" for r in later) + "."]
        if _plot_budget(budget, path.with_name("budget_resnet20_w4a4.png")):
            lines += ["", "![accuracy against cost](budget_resnet20_w4a4.png)"]
    (path.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _plot_budget(rows: list[dict], path: Path) -> bool:
    """Top-1 against wall minutes (generation + quantization), one marker per point, one line per image count."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in sorted({r["n"] for r in rows}):
        points = sorted(((r["generation_s"] or 0) + r["quantize_s"], 100 * r["top1"], r["iterations_per_unit"],
                         r.get("torch_threads")) for r in rows if r["n"] == n and r["seed"] == 0)
        ax.plot([p[0] / 60 for p in points], [p[1] for p in points], marker="o", label=f"{n} DGH images")
        others = [((r["generation_s"] or 0) + r["quantize_s"], 100 * r["top1"]) for r in rows if r["n"] == n and r["seed"] != 0]
        if others:  # the other seeds of a point (another machine: their own wall time)
            ax.scatter([o[0] / 60 for o in others], [o[1] for o in others], marker="x", color=ax.lines[-1].get_color(),
                       label=f"{n} images, seeds 1-2 (faster machine)")
        for minutes, top1, iterations, threads in points:
            ax.annotate(f"{iterations} it{' (1 thread)' if threads == 1 else ''}", (minutes / 60, top1),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(100 * FP32["resnet20"], color="black", linestyle="--", linewidth=1, label="FP32 81.03 %")
    ax.axhline(80.0, color="grey", linestyle=":", linewidth=1, label="goal: 80.0")
    ax.set_xlabel("wall minutes on this 2-core machine (generation + quantization)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("ResNet-20 W4A4, zero-shot (DGH + pdquant); line: seed 0", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["main", "ablation", "resnet56", "sweep", "budget", "ingredients", "datagen",
                                            "pdweight"], default="main")
    parser.add_argument("--iterations", type=int, nargs="+", help="budget suite: iterations per unit (default 300 1000 3000)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=256, help="calibration images per seed")
    parser.add_argument("--preset", choices=["fast", "default", "paper"], default="default")
    parser.add_argument("--limit", type=int, help="test images (default: all 10,000)")
    parser.add_argument("--work", default="/tmp/pdquant_bench", help="exported models, calibration sets, QDQ models")
    parser.add_argument("--redo", action="store_true", help="run rows already in the results again")
    parser.add_argument("--resume", action="store_true",
                        help="continue a row from the units its stopped run checkpointed (quantize s adds their time)")
    parser.add_argument("--data", nargs="+", help="only these calibration data kinds (e.g. bns fdda)")
    parser.add_argument("--method", nargs="+", help="only these methods (none brecq pdquant)")
    parser.add_argument("--bits", nargs="+", help="only these bit-widths (e.g. W4A4)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.render_only:
        render(RESULTS / "pdquant.json")
    else:
        run(args)


if __name__ == "__main__":
    main()
