"""Scale benchmarks: quantize memory against the number of calibration images, the ImageNet-size pipeline
on this machine, two-process reconstruction, and torch threads under a competing process.

Usage:
    python bench/scale.py --suite memory                  # ResNet-18 @224: W8A8 mse and W4A4 pdquant, N = 64 / 256 / 1024
    python bench/scale.py --suite pipeline --model resnet18   # export -> generate (DGH) -> quantize W4A4 pdquant, per stage
    python bench/scale.py --suite distributed             # ResNet-20 W4A4 pdquant default: 1 process vs torchrun 2 processes
    python bench/scale.py --suite threads                 # `toolchain generate` s/iteration alone and beside a busy process
    python bench/scale.py --render-only

Every stage is its own `toolchain` process (bench/measure.py): wall time and peak resident memory
(ru_maxrss). Random-weight ImageNet models get BN statistics of their own activations
(toolchain_models.statistics), so the cost is that of a trained network; accuracy is not measured there.
Results are merged into bench/results/scale.json (keyed by suite and row) and rendered to scale.md.
Run alone: a second torch process on the 2 cores changes every time measured here (that is what the
threads suite measures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from measure import run_stage

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scale.json"
IMAGENET = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--input-size", "224"]
FACTORIES = {"resnet18": "toolchain_models.statistics:resnet18_data_bn",
             "mobilenetv2": "toolchain_models.statistics:mobilenetv2_data_bn"}
# The CPU budget of the ImageNet-size pipeline (per stage options; see the README's table for its cost)
# The `cpu` presets: the same settings the first pipeline rows ran with explicit flags (generate `--preset default
# --batch-size 32 --iterations 100`, quantize `--preset default --recon-iterations 100 --recon-batch-size 8`).
CPU_GENERATE = ["--method", "dgh", "-n", "64", "--preset", "cpu"]
CPU_RECON = ["--reconstruct", "pdquant", "--preset", "cpu"]


def _env(threads: int | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), str(ROOT)])}
    env.pop("WORLD_SIZE", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _export(name: str, work: Path) -> Path:
    model = work / f"{name}.onnx"
    if not model.exists():
        run_stage(f"export {name}", ["export", FACTORIES[name], *IMAGENET, "-o", str(model), "--overwrite"], _env())
    return model


def _gaussian_calib(work: Path, n: int) -> Path:
    path = work / f"gauss224_n{n}.npz"
    if not path.exists():
        rng = np.random.default_rng(0)
        np.savez(path, inputs=rng.standard_normal((n, 3, 224, 224), dtype=np.float32))
    return path


def _report(path: Path) -> dict:
    return json.loads(path.with_name(path.stem + ".report.json").read_text())


def memory_rows(work: Path, sizes: list[int], budgets: list[str]) -> list[dict]:
    model = _export("resnet18", work)
    rows = []
    for n in sizes:
        calib = _gaussian_calib(work, n)
        out = work / f"r18_w8a8_n{n}.onnx"
        stage = run_stage(f"quantize W8A8 mse N={n}", ["quantize", str(model), "--calib", str(calib), "-o", str(out),
                                                         "--overwrite"], _env())
        rows.append(save_row({"suite": "memory", "key": f"w8a8-n{n}", "n": n, "config": "W8A8 mse", **stage}))
        for budget in budgets:
            out = work / f"r18_w4a4_n{n}_{budget}.onnx"
            extra = [] if budget == "default" else ["--cache-budget", budget]
            stage = run_stage(f"quantize W4A4 pdquant fast N={n} budget {budget}",
                              ["quantize", str(model), "--calib", str(calib), "-o", str(out), "--overwrite", "--w-bits", "4",
                               "--a-bits", "4", "--reconstruct", "pdquant", "--preset", "fast", *extra], _env())
            cache = _report(out)["reconstruction"]["cache"]
            rows.append(save_row({"suite": "memory", "key": f"w4a4-n{n}-{budget}", "n": n, "config": "W4A4 pdquant fast",
                                  "cache_budget": budget, "cache": cache, **stage}))
    return rows


def pipeline_rows(work: Path, name: str) -> list[dict]:
    model = _export(name, work)
    calib, out = work / f"{name}_dgh64.npz", work / f"{name}_w4a4_pd.onnx"
    stages = [run_stage(f"{name} generate DGH", ["generate", str(model), *CPU_GENERATE, "-o", str(calib), "--overwrite"], _env())]
    stages.append(run_stage(f"{name} quantize W4A4 pdquant", ["quantize", str(model), "--calib", str(calib), "-o", str(out),
                                                               "--overwrite", "--w-bits", "4", "--a-bits", "4", *CPU_RECON],
                            _env()))
    report = _report(out)
    total = sum(s["seconds"] for s in stages)
    return [{"suite": "pipeline", "key": name, "model": name, "stages": stages, "total_s": round(total, 1),
             "generate": " ".join(CPU_GENERATE), "quantize": " ".join(CPU_RECON),
             "units": len(report["reconstruction"].get("units", [])), "recon_s": report["reconstruction"].get("seconds"),
             "output_sqnr_db": report["summary"]["output_sqnr_db"]}]


def distributed_rows(work: Path, calib: Path, test: Path) -> list[dict]:
    from toolchain import api

    model = work / "resnet20.onnx"
    if not model.exists():
        from toolchain.core.paths import shared_dir

        api.export_model("resnet20_cifar10", model, weights=shared_dir() / "weights" / "resnet20-12fca82f.th")
    common = ["quantize", str(model), "--calib", str(calib), "--w-bits", "4", "--a-bits", "4", "--reconstruct", "pdquant",
              "--preset", "default", "--seed", "0", "--overwrite"]
    rows = []
    for label, prefix, threads in (("1 process, 2 threads", None, 2),
                                   ("torchrun 2 processes, 1 thread each", [sys.executable, "-m", "torch.distributed.run",
                                                                            "--standalone", "--nproc-per-node", "2", "-m",
                                                                            "toolchain.cli"], None)):
        out = work / f"r20_dist_{'k2' if prefix else 'k1'}.onnx"
        stage = run_stage(f"ResNet-20 W4A4 pdquant default, {label}", [*common, "-o", str(out)], _env(threads), prefix)
        top1 = api.evaluate_model(out, test, progress=False).top1
        rows.append(save_row({"suite": "distributed", "key": label, "top1": top1,
                              "recon_s": _report(out)["reconstruction"]["seconds"], "calib": str(calib.name), **stage}))
    return rows


def _competitor(kind: str) -> subprocess.Popen | None:
    """A process that keeps the CPU busy: one spinning core, or a torch job at torch's default threads."""
    if kind == "none":
        return None
    code = {"busy loop (1 core)": "while True: pass",
            "torch job (2 threads)": "import torch\nx = torch.randn(64, 64, 56, 56)\nw = torch.randn(64, 64, 3, 3)\n"
                                     "while True: torch.nn.functional.conv2d(x, w, padding=1)"}[kind]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    process = subprocess.Popen([sys.executable, "-c", code], env=env)
    time.sleep(3)  # running before the measured process starts
    return process


def threads_rows(work: Path, model: Path, iterations: int) -> list[dict]:
    rows = []
    # GOMP_SPINCOUNT=300000 is libgomp's own default: it stops the CLI from choosing PASSIVE (the setting before)
    settings = (("before: 2 threads, OpenMP threads spin (libgomp default)", None, {"GOMP_SPINCOUNT": "300000"}),
                ("chosen default: 2 threads (the usable cores), OMP_WAIT_POLICY=PASSIVE", None, {}),
                ("--threads 1 (PASSIVE)", 1, {}))
    for competitor in ("none", "busy loop (1 core)", "torch job (2 threads)"):
        for label, threads, variables in settings:
            process = _competitor(competitor)
            try:
                out = work / "threads_probe.npz"
                extra = ["--threads", str(threads)] if threads else []
                env = {k: v for k, v in _env().items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
                env.update(variables)
                stage = run_stage(f"generate, competitor {competitor}, {label}",
                                  ["generate", str(model), "--method", "dgh", "-n", "64", "--iterations", str(iterations),
                                   "--batch-size", "32", "-o", str(out), "--overwrite", *extra], env)
            finally:
                if process is not None:
                    process.kill()
                    process.wait()
            with np.load(out) as data:
                manifest = json.loads(str(data["manifest"]))
            per_iteration = manifest["optimisation_time_s"] / manifest["iterations"]
            rows.append(save_row({"suite": "threads", "key": f"{competitor} / {label}", "competitor": competitor,
                                  "threads": label, "s_per_iteration": round(per_iteration, 3), **stage}))
    return rows


def load() -> list[dict]:
    return json.loads(RESULTS.read_text())["rows"] if RESULTS.exists() else []


def save_row(row: dict) -> dict:
    """Merge one measured row into the results now (a stopped run keeps what it measured); returns it."""
    save([row])
    return row


def save(rows: list[dict]) -> None:
    merged = {(r["suite"], r["key"]): r for r in load()}
    merged.update({(r["suite"], r["key"]): r for r in rows})
    payload = {"machine": {"platform": platform.platform(), "cores": len(os.sched_getaffinity(0))},
               "rows": list(merged.values())}
    RESULTS.write_text(json.dumps(payload, indent=1) + "\n")


def render() -> str:
    rows = load()
    lines = ["# Scale: memory, ImageNet-size inputs, processes, threads", "",
             f"Source: `bench/scale.py`. Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores. Each stage is "
             "its own process: wall time and peak resident memory (ru_maxrss).", ""]
    memory = [r for r in rows if r["suite"] == "memory"]
    if memory:
        lines += ["## Peak memory of `toolchain quantize`, ResNet-18 @224 (random weights, data BN statistics), Gaussian "
                  "calibration inputs", "",
                  "| N images | configuration | cache budget | peak RSS GB | wall s | cache in RAM at peak GB | spilled GB |",
                  "|---:|---|---|---:|---:|---:|---:|"]
        for r in sorted(memory, key=lambda r: (r["config"], -round((r.get("cache") or {}).get("budget_bytes", 0) / 2 ** 30), r["n"])):
            cache = r.get("cache") or {}
            ram = f"{cache['peak_ram_bytes'] / 1e9:.2f}" if cache else "–"
            spilled = f"{cache['spilled_bytes'] / 1e9:.2f}" if cache else "–"
            budget = f"{cache['budget_bytes'] / 2 ** 30:.1f} GiB" if cache else "–"
            lines.append(f"| {r['n']} | {r['config']} | {budget} | {r['peak_rss_gb']:.2f} | "
                         f"{r['seconds']:.0f} | {ram} | {spilled} |")
        lines += ["", "The 11 GiB budget was the default when these ran (half the available memory); the default is now "
                      "a quarter of it, at most 1 GiB (recon.cache.default_budget), i.e. the 1.0 GiB rows."]
    pipeline = [r for r in rows if r["suite"] == "pipeline"]
    if pipeline:
        lines += ["", "## ImageNet-size pipeline on this machine (W4A4 pdquant, every layer)", "",
                  "| model | stage | wall min | peak RSS GB |", "|---|---|---:|---:|"]
        for r in pipeline:
            for s in r["stages"]:
                lines.append(f"| {r['model']} | {s['stage'].split(' ', 1)[1]} | {s['seconds'] / 60:.1f} | {s['peak_rss_gb']:.2f} |")
            lines.append(f"| {r['model']} | **total** | **{r['total_s'] / 60:.1f}** | |")
        lines += ["", f"Options: generate `{pipeline[0]['generate']}`; quantize `{pipeline[0]['quantize']}`."]
    dist = [r for r in rows if r["suite"] == "distributed"]
    if dist:
        lines += ["", "## Reconstruction in two processes (torchrun, gloo) vs one (ResNet-20 W4A4 pdquant default)", "",
                  "| run | top-1 % | quantize wall s | reconstruction s | peak RSS GB (largest process) |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['key']} | {100 * r['top1']:.2f} | {r['seconds']:.0f} | {r['recon_s']:.0f} | {r['peak_rss_gb']:.2f} |"
                  for r in dist]
    threads = [r for r in rows if r["suite"] == "threads"]
    if threads:
        lines += ["", "## `toolchain generate` (ResNet-20, DGH, 64 images, batch 32) beside a competing process", "",
                  "| competing process | torch threads | s per iteration |", "|---|---|---:|"]
        lines += [f"| {r['competitor']} | {r['threads']} | {r['s_per_iteration']:.2f} |" for r in threads]
    text = "\n".join(lines) + "\n"
    RESULTS.with_suffix(".md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["memory", "pipeline", "distributed", "threads"])
    parser.add_argument("--model", choices=sorted(FACTORIES), default="resnet18")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--budgets", nargs="+", default=["default", "1G"], help="memory suite: --cache-budget values")
    parser.add_argument("--calib", type=Path, help="distributed suite: a ResNet-20 calibration .npz (256 DGH images)")
    parser.add_argument("--iterations", type=int, default=20, help="threads suite: generation iterations")
    parser.add_argument("--work", type=Path, default=Path("/tmp/scale_bench"))
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if not args.render_only:
        args.work.mkdir(parents=True, exist_ok=True)
        if args.suite == "memory":
            save(memory_rows(args.work, args.sizes, args.budgets))
        elif args.suite == "pipeline":
            save(pipeline_rows(args.work, args.model))
        elif args.suite == "distributed":
            from toolchain.core.paths import shared_dir

            save(distributed_rows(args.work, args.calib, shared_dir() / "datasets" / "cifar10-test-jpg.tar.gz"))
        elif args.suite == "threads":
            from toolchain import api
            from toolchain.core.paths import shared_dir

            model = args.work / "resnet20.onnx"
            if not model.exists():
                api.export_model("resnet20_cifar10", model, weights=shared_dir() / "weights" / "resnet20-12fca82f.th")
            save(threads_rows(args.work, model, args.iterations))
        else:
            parser.error("choose --suite (or --render-only)")
    print(render())


if __name__ == "__main__":
    main()
