"""The torch stages at 224x224 on the CPU: where the time goes, and the code before the speed work against now.

Usage:
    python bench/torch_speed.py                                  # 3 models: profile, then old/new interleaved
    python bench/torch_speed.py --models efficientnet_lite0 --rounds 2 --stages generate
    python bench/torch_speed.py --baseline 4b3e5f9 --new HEAD --work /tmp/torch_speed   # both codes frozen
    python bench/torch_speed.py --render-only                    # rewrite the .md from the .json

Old code: a git worktree of `--baseline` (the last commit before the speed work); new code: this checkout.
Each measurement is its own process (bench/torch_speed_worker.py) with that code first on PYTHONPATH and
a fresh, empty torch.compile cache (a first run's compile time, not a warm cache's), and the two codes
alternate within every round, model by model, so drift of the machine hits both.

- generate: the real `generate` (DGH, preset cpu, 64 images at batch 32, 6 iterations), every optimiser
  step timed; seconds per image-iteration = the median steady step / 32. The first two steps (the compile,
  first touch of memory) are reported as start-up.
- reconstruct: the real `toolchain quantize --w-bits 4 --a-bits 8 --reconstruct pdquant --preset cpu`, the
  partition cut to its first 3 units (the largest spatially, the most expensive), 100 iterations per unit as
  the preset; seconds per image-iteration = those units' seconds / (units x iterations x 16 images).
- profile: torch.profiler over eager generation steps of the old code (self time per op, grouped into op
  families), and of the new code with its defaults.

The floor: multiply-adds of one forward (ONNX shape inference: Conv, Gemm, MatMul) x 2 FLOP x 2 (the forward
and the gradient with respect to the input; no weight gradients) per image-iteration, over this machine's
measured dense float32 rate (a 2048^3 torch.mm). Models: EfficientNet-Lite0 and MobileNetV2 (pretrained, zoo)
and ResNet-18 (the zoo's random initialisation: timing does not depend on the weights). Reconstruction
data: 64 Gaussian images (`generate --method gaussian`; the timing does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper, shape_inference

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WORKER = ROOT / "bench" / "torch_speed_worker.py"
MODELS = ("efficientnet_lite0", "resnet18", "mobilenetv2_imagenet")
BASELINE = "4b3e5f9"  # main before issue #30's speed work


def worktree(ref: str, work: Path) -> Path:
    path = work / f"code-{ref}"
    if not (path / "toolchain").exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True,
                       capture_output=True)
    return path


def toolchain_cli(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "toolchain.cli", *args], check=True, cwd=ROOT, capture_output=True)


def prepare(model: str, work: Path) -> tuple[Path, Path]:
    onnx_path, calib = work / f"{model}.onnx", work / f"{model}_gaussian64.npz"
    if not onnx_path.exists():
        toolchain_cli(["export", model, "-o", str(onnx_path)])
    if not calib.exists():
        toolchain_cli(["generate", str(onnx_path), "--method", "gaussian", "-n", "64", "-o", str(calib)])
    return onnx_path, calib


def run_worker(code: Path, mode: str, args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(code), "TORCHINDUCTOR_CACHE_DIR": cache}
        done = subprocess.run([sys.executable, str(WORKER), mode, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker {mode} {args} with {code} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def layer_macs(path: Path) -> list[tuple[str, float]]:
    """(weight initializer, multiply-adds of one single-image forward) of every Conv, Gemm and MatMul, in graph order."""
    model = onnx.load(str(path))
    graph = model.graph
    graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    weights = {i.name: numpy_helper.to_array(i).shape for i in graph.initializer}
    layers = []
    for node in inferred.graph.node:
        if node.op_type == "Conv" and node.input[1] in weights and node.output[0] in shapes:
            kernel = weights[node.input[1]]
            layers.append((node.input[1], float(np.prod(shapes[node.output[0]])) * float(np.prod(kernel[1:]))))
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in weights:
            out = shapes.get(node.output[0], [1])
            layers.append((node.input[1], float(np.prod(out)) * float(weights[node.input[1]][0 if node.op_type == "MatMul" else -1])))
    return layers


def recon_floor_s(record: dict, layers: list[tuple[str, float]], gflops: float) -> float | None:
    """The measured units' convolution and matrix work at the dense rate: the seconds no float32 code can beat.

    Per unit, in multiply-adds x 2 FLOP: distribution correction (steps x samples x the unit's forward and input
    gradient), the training loop (iterations x batch x 2 halves x the unit's forward, input and weight gradients;
    with the PD term, iterations x batch x the FP tail's forward and input gradient), the loss measured before and
    after (2 x 64 samples through unit and tail), and the passes for targets and next inputs (3 x samples x unit).
    Element-wise work (activations, QDrop, losses, the optimiser) is left out, so the floor is a lower bound.
    """
    if "unit_detail" not in record:
        return None
    order = [name for name, _ in layers]
    macs = dict(layers)
    work = record["work"]
    n, iterations, batch = work["samples"], work["iterations"], work["batch_size"]
    flop = 0.0
    for unit in record["unit_detail"]:
        mine = [w for w in unit["weights"] if w in macs]
        if not mine:
            return None  # a weight the exported graph names otherwise: no honest floor
        unit_m = sum(macs[w] for w in mine)
        tail_m = sum(m for _, m in layers[max(order.index(w) for w in mine) + 1:]) if unit["pd_term"] else 0.0
        if unit["distribution_correction"]:
            flop += work["dc_steps"] * n * 2 * 2 * unit_m
        halves = 2 if unit["pd_term"] else 1  # the QDrop half and, with the PD term, the quantized half
        passes = 2 if unit.get("reads_image") else 3  # forward, weight gradient, input gradient (none for the image)
        flop += iterations * halves * batch * passes * 2 * unit_m + iterations * batch * 2 * 2 * tail_m
        flop += 2 * min(64, n) * 2 * (unit_m + tail_m) + 3 * n * 2 * unit_m
    return flop / (gflops * 1e9)


def dense_gflops() -> float:
    """This machine's float32 matrix-multiply rate with torch's threads: the practical peak."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / statistics.median(times) / 1e9


FAMILIES = (
    ("conv depthwise", lambda n, s: _conv_kind(n, s) == "depthwise"),
    ("conv pointwise (1x1)", lambda n, s: _conv_kind(n, s) == "pointwise"),
    ("conv dense (kxk)", lambda n, s: _conv_kind(n, s) == "dense"),
    ("augmentation blur (3-channel depthwise)", lambda n, s: _conv_kind(n, s) == "blur"),
    ("compiled (inductor) fused kernels", lambda n, s: "CompiledFxGraph" in n or "inductor" in n.lower()),
    ("BatchNormalization (eval affine)", lambda n, s: "batch_norm" in n),
    ("activations (ReLU6 clamp, ReLU)", lambda n, s: any(k in n for k in ("hardtanh", "clamp", "relu", "threshold"))),
    ("optimiser (RAdam / Adam)", lambda n, s: n.startswith("Optimizer.") or "_fused_adam" in n or n in ("aten::lerp_", "aten::addcdiv_")),
    ("copies, padding, fills", lambda n, s: any(k in n for k in ("copy_", "fill_", "pad", "flip", "zero_", "slice"))),
    ("element-wise & reductions (BN-statistics hooks, losses)", lambda n, s: n.startswith("aten::")),
)


def _conv_kind(name: str, shapes: list) -> str | None:
    if name not in ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution", "aten::conv2d"):
        return None
    if name == "aten::convolution_backward":
        shapes = shapes[1:]  # grad_output, input, weight
    if len(shapes) < 2 or len(shapes[1]) != 4:
        return None
    channels, weight = shapes[0][1], shapes[1]
    if weight[1] == 1 and channels > 1:
        return "blur" if channels == 3 else "depthwise"
    return "pointwise" if weight[2] == weight[3] == 1 else "dense"


def families(profile: dict) -> dict[str, float]:
    """Seconds per step by op family; 'executor & Python overhead' = the step's wall time not inside an op."""
    totals: dict[str, float] = {name: 0.0 for name, _ in FAMILIES}
    # Optimizer.step's own record holds its ops' time too: count its ops once, under the optimiser.
    for op in profile["ops"]:
        name, shapes = op["name"], op["shapes"]
        if op["name"].startswith("autograd::") or op["name"] in ("Moments", "MomentsBackward"):
            continue  # wrappers: their self time is the autograd engine's bookkeeping, counted below
        for family, matches in FAMILIES:
            if matches(name, shapes):
                totals[family] += op["self_s"]
                break
    inside = sum(totals.values())
    totals["executor, autograd & Python overhead"] = max(0.0, profile["step_s"] - inside)
    return {k: round(v, 3) for k, v in totals.items()}


def measure(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    old = worktree(args.baseline, work)
    new = worktree(args.new, work) if args.new else ROOT
    codes = {"old": old, "new": new}
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    peak = dense_gflops()
    results: dict = {"baseline": args.baseline, "new": args.new or "working tree", "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                     f"torch {torch.__version__}", "dense_float32_gflops": round(peak, 1), "models": {}}
    for model in args.models:
        onnx_path, calib = prepare(model, work)
        layers = layer_macs(onnx_path)
        macs = sum(m for _, m in layers)
        floor = 4 * macs / (peak * 1e9)  # seconds per image-iteration at the dense rate
        entry: dict = {"forward_gmacs": round(macs / 1e9, 3), "floor_image_iteration_s": round(floor, 5)}
        for stage in ("generate", "reconstruct"):
            if stage in args.stages:
                entry[stage] = {"old": [], "new": [], "new_code": args.new or "working tree"}
        if "profile" in args.stages:
            entry["profile_old"] = run_worker(old, "profile", ["--model", str(onnx_path)])
            entry["profile_new"] = run_worker(new, "profile", ["--model", str(onnx_path), "--accelerated"])
            entry["families_old"] = families(entry["profile_old"])
            entry["families_new"] = families(entry["profile_new"])
        for round_index in range(args.rounds):
            order = ("old", "new") if round_index % 2 == 0 else ("new", "old")
            for stage in ("generate", "reconstruct"):
                if stage not in args.stages:
                    continue
                for code in order:
                    worker_args = ["--model", str(onnx_path)]
                    if stage == "reconstruct":
                        worker_args += ["--calib", str(calib), "--units", "3", "--iterations", str(args.recon_iterations),
                                        "--phases"]
                    record = run_worker(codes[code], stage, worker_args)
                    entry[stage][code].append(record)
                    if stage == "reconstruct" and "recon_floor_image_iteration_s" not in entry:
                        floor = recon_floor_s(record, layers, peak)
                        if floor is not None:
                            per = len(record["unit_seconds"]) * record["iterations"] * record["batch"]
                            entry["recon_floor_image_iteration_s"] = round(floor / per, 5)
                    print(f"{model} {stage} {code}: {record['image_iteration_s']} s/image-iteration", flush=True)
        results["models"][model] = entry
        save(results, args)  # after each model: a stop keeps what finished
    return results


def summary(entry: dict, stage: str) -> dict | None:
    if stage not in entry:
        return None
    old, new = entry[stage]["old"], entry[stage]["new"]
    if not old or not new:
        return None
    o = statistics.median(r["image_iteration_s"] for r in old)
    n = statistics.median(r["image_iteration_s"] for r in new)
    floor = entry["floor_image_iteration_s"]
    if stage == "reconstruct":  # its own floor: the units' work, per image-iteration as the timing counts it
        floor = entry.get("recon_floor_image_iteration_s")
    return {"old": o, "new": n, "speedup": o / n, "old_floor": floor / o if floor else None,
            "new_floor": floor / n if floor else None,
            "old_peak_gb": max(r["peak_rss_gb"] for r in old), "new_peak_gb": max(r["peak_rss_gb"] for r in new),
            "new_start_up_s": statistics.median(r.get("start_up_s", 0.0) for r in new),
            "old_start_up_s": statistics.median(r.get("start_up_s", 0.0) for r in old), "rounds": len(old)}


def render(results: dict) -> str:
    lines = ["# Torch stages at 224x224 on the CPU: old code against new", "",
             f"Machine: {results['machine']}; dense float32 rate {results['dense_float32_gflops']} GFLOP/s "
             f"(2048^3 torch.mm). Old code: `{results['baseline']}`; the new code of each row is named in it. "
             "Seconds per image-iteration, median over "
             "rounds; old and new alternate within each round, each run its own process with an empty compile "
             "cache. Generation's floor = 4 x forward MACs / dense rate; reconstruction's = the measured units' "
             "convolution and matrix work (distribution correction, training loop with the PD tail, measures, passes) "
             "at the dense rate (bench/torch_speed.py recon_floor_s).", "",
             "| model | stage | new code | old s/img-it | new s/img-it | speed-up | of floor old → new | peak GB old → new | start-up s old → new |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, entry in results["models"].items():
        for stage in ("generate", "reconstruct"):
            row = summary(entry, stage)
            if row is None:
                continue
            floor = (f"{100 * row['old_floor']:.0f} % → {100 * row['new_floor']:.0f} %" if row["old_floor"] else "n/a")
            start_up = (f"{row['old_start_up_s']:.0f} → {row['new_start_up_s']:.0f}" if stage == "generate"
                        else "in the units' time")
            code = entry[stage].get("new_code", results.get("new", "working tree"))
            lines.append(f"| {model} | {stage} | `{code}` | {row['old']:.4f} | {row['new']:.4f} | **{row['speedup']:.2f}x** | {floor} | "
                         f"{row['old_peak_gb']} → {row['new_peak_gb']} | {start_up} |")
    profiled = {m: e for m, e in results["models"].items() if "families_old" in e}
    if profiled:
        lines += ["", "## Where a generation step goes (batch 32, seconds per step; torch.profiler self time)", "",
                  "The profiler's own cost per op inflates the old eager steps (many small ops) more than the compiled "
                  "ones: read the shares here, and the speed from the table above.", ""]
        header = "| op family | " + " | ".join(f"{m} old | {m} new" for m in profiled) + " |"
        lines += [header, "|---|" + "---|" * (2 * len(profiled))]
        for family in next(iter(profiled.values()))["families_old"]:
            cells = []
            for entry in profiled.values():
                cells += [f"{entry['families_old'][family]:.3f}", f"{entry['families_new'][family]:.3f}"]
            lines.append(f"| {family} | " + " | ".join(cells) + " |")
        cells = []
        for entry in profiled.values():
            cells += [f"**{entry['profile_old']['step_s']:.3f}**", f"**{entry['profile_new']['step_s']:.3f}**"]
        lines.append("| whole step (wall) | " + " | ".join(cells) + " |")
    phased = {m: e for m, e in results["models"].items()
              if "reconstruct" in e and all("phases_s" in r for r in e["reconstruct"]["old"] + e["reconstruct"]["new"])
              and e["reconstruct"]["old"]}
    if phased:
        lines += ["", "## Where the reconstruction of the first 3 units goes (seconds, first round; wall time of each step)",
                  "", "The steps do not nest; the training loop is the rest of the units' time, and the PD tail's and "
                  "QDrop's lines are the forward part of it (their backward is inside the rest).", ""]
        lines += ["| step | " + " | ".join(f"{m} old | {m} new" for m in phased) + " |",
                  "|---|" + "---|" * (2 * len(phased))]
        names = []
        for entry in phased.values():
            for record in entry["reconstruct"]["old"][:1] + entry["reconstruct"]["new"][:1]:
                names += [k for k, v in record["phases_s"].items() if not isinstance(v, dict) and k not in names]
        for name in names:
            cells = []
            for entry in phased.values():
                for code in ("old", "new"):
                    value = entry["reconstruct"][code][0]["phases_s"].get(name)
                    cells.append("" if value is None else f"{value:.1f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        cells = []
        for entry in phased.values():
            cells += [f"**{sum(entry['reconstruct'][c][0]['unit_seconds']):.1f}**" for c in ("old", "new")]
        lines.append("| the 3 units (wall) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save(results: dict, args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "torch_speed.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update({k: v for k, v in results.items() if k != "models"})
    for model, entry in results["models"].items():  # per key: a profile-only run keeps the timing rounds
        merged.setdefault("models", {}).setdefault(model, {}).update(entry)
    path.write_text(json.dumps(merged, indent=1))
    (RESULTS / "torch_speed.md").write_text(render(merged))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--stages", nargs="+", default=["profile", "generate", "reconstruct"],
                        choices=["profile", "generate", "reconstruct"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--recon-iterations", type=int, default=100)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--new", help="a commit to measure as the new code (a worktree; default: this checkout)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "torch_speed"))
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if args.render_only:
        results = json.loads((RESULTS / "torch_speed.json").read_text())
        (RESULTS / "torch_speed.md").write_text(render(results))
        return
    measure(args)
    print((RESULTS / "torch_speed.md").read_text())


if __name__ == "__main__":
    main()
