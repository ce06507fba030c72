"""Deployment targets on ResNet-20: each target's file in its own runtime (coverage, top-1, latency).

Usage:
    python bench/targets.py --calib /work/budget_work/resnet20_dgh_n256_s0.npz   # 256 DGH images (zero-shot)
    python bench/targets.py --calib ... --only qnn --qnn-sample 1000
    python bench/targets.py --calib ... --no-latency && python bench/targets.py --latency-only
    python bench/targets.py --render-only

Per row (target, bits): the QDQ file is quantized from the same zero-shot calibration set (pdquant
`default` where the weights have 4 bits, the calibrator alone at 8), then
- the coverage the target's runtime reports (OpenVINO: runtime precision of every compute layer; QNN:
  every node on HTP with CPU fallback off; onnxruntime x86: quant.fusion), or the layout check alone
  where this machine lacks the runtime (TensorRT: a GPU; ort-arm: an ARM build);
- top-1 in that runtime and, on the same images, in onnxruntime CPU (the same file) and in the reference
  (onnxruntime unoptimised: the file's exact Q/DQ semantics): the differences are what each runtime changes;
- the runtime's outputs against the reference on 8 calibration inputs (SQNR dB, the quantize verdict);
- latency at batch 1 (median of --runs after a warm-up) and at batch 32 of the file and of the FP32 model in
  the same runtime, 2 threads, in alternating rounds in this process so that drift hits both (--no-latency,
  then --latency-only with the machine alone, when accuracy rows run beside other work); OpenVINO's FP32 model
  also with INFERENCE_PRECISION_HINT f32, since its default is bf16 on CPUs that have it. QNN's HTP is an emulator on x86: its speed is
  not the NPU's, so no latency is reported for it.

Rows are merged into bench/results/targets.json and rendered to targets.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from timing import interleaved_ms, sessions_ms

from toolchain import api
from toolchain.core.cpu import has_vnni
from toolchain.core.paths import shared_dir
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.reconstruct import ReconConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WEIGHTS = "resnet20-12fca82f.th"
# (target, w_bits, a_bits, extra QuantConfig fields): the configurations each runtime runs
ROWS = [
    ("ort-x86", 8, 8, {}),  # full-range weights: right on CPUs with VNNI, saturating without
    ("ort-x86", 8, 8, {"reduce_range": True}),  # for CPUs without VNNI (see quant.config reduce_range)
    ("ort-x86", 4, 4, {}),
    ("ort-arm", 8, 8, {}),
    ("openvino", 8, 8, {}),  # full-range weights: saturate on CPUs without VNNI, kept to show it
    ("openvino", 8, 8, {"reduce_range": True}),
    ("openvino", 4, 8, {}),
    ("qnn", 8, 8, {}),
    ("qnn", 8, 16, {}),
    ("qnn", 4, 8, {}),
    ("qnn", 4, 16, {}),
    ("tensorrt", 8, 8, {}),
]
RUNTIME_OF = {"ort-x86": "ort", "ort-arm": "ort", "openvino": "openvino", "qnn": "qnn", "tensorrt": "ort"}


def measure(target: str, w_bits: int, a_bits: int, extra: dict, model: Path, calib: Path, test: Path, work: Path,
            limit: int | None, qnn_sample: int, runs: int, skip_latency: bool = False) -> dict:
    method = "pdquant" if w_bits < 8 or a_bits < 8 else "none"
    config = QuantConfig(w_bits=w_bits, a_bits=a_bits, target=target, reconstruction=ReconConfig.preset(method, "default"),
                         **extra)
    out = work / f"resnet20_{target}_w{w_bits}a{a_bits}{_variant(extra)}.onnx"
    started = time.perf_counter()
    outcome = api.quantize_model(model, calib, out, config, overwrite=True, progress=False)
    quantize_s = time.perf_counter() - started
    runtime = RUNTIME_OF[target]
    sample = min(qnn_sample, limit or 10000) if runtime == "qnn" else limit
    in_runtime = api.evaluate_model(out, test, limit=sample, progress=False, runtime=runtime)
    in_ort = api.evaluate_model(out, test, limit=sample, progress=False) if runtime != "ort" else in_runtime
    reference = api.evaluate_model(out, test, limit=sample, progress=False, runtime="reference")
    fp32 = api.evaluate_model(model, test, limit=sample, progress=False, runtime="openvino" if runtime == "openvino" else "ort")
    verdict = outcome.report["target"]
    row = {"target": target, "bits": f"W{w_bits}A{a_bits}", "method": method, "runtime": runtime,
           "verified_in_runtime": verdict["verified"], "runtime_coverage": verdict.get("coverage"),
           "runtime_details": verdict.get("details") or verdict.get("why"),
           "layout_problems": verdict["layout_problems"], "ort_x86_fusion_coverage": outcome.report["summary"]["fusion_coverage"],
           "top1_runtime": in_runtime.top1, "top1_ort_cpu": in_ort.top1, "top1_reference": reference.top1, "top1_fp32": fp32.top1,
           "images": in_runtime.n,
           "quantize_s": round(quantize_s, 1), "extra": extra}
    row["agreement_db"] = verdict.get("agreement_db")
    if target == "ort-x86":  # its verdict is the fusion report: measure the kernels against the reference here too
        # (not ort-arm or tensorrt: onnxruntime x86 stands in for their runtimes, whose kernels are not these)
        from toolchain.runtimes import runtime_agreement_db

        inputs = np.load(calib)["inputs"][:8]
        row["agreement_db"] = round(runtime_agreement_db("ort", out, inputs), 2)
    row["cpu_vnni"] = has_vnni()  # sessions run on different machines: saturation and speed depend on it
    if runtime != "qnn" and not skip_latency:
        row.update(latency(runtime, model, out, runs))
    return row


def latency(runtime: str, model: Path, out: Path, runs: int) -> dict:
    """Median ms per call of the file and the FP32 model in the same runtime, at batch 1 and at batch 32
    (per call of 32 images: throughput, where the integer kernels' advantage is not hidden by per-call overhead)."""
    timed = {}
    for batch, suffix, count in ((1, "", runs), (32, "_b32", max(runs // 5, 40))):
        if runtime == "openvino":  # its FP32 default is bf16 on CPUs that have it: time true f32 beside it
            from toolchain.runtimes import openvino

            sessions = [openvino.open_session(out, 2), openvino.open_session(model, 2),
                        openvino.open_session(model, 2, precision="f32")]
            quantized_ms, fp32_ms, f32_ms = sessions_ms(sessions, [batch, 3, 32, 32], count)
            timed[f"latency{suffix}_f32_hint_ms"] = round(f32_ms, 4)
        else:
            quantized_ms, fp32_ms = interleaved_ms(runtime, (out, model), [batch, 3, 32, 32], count)
        timed[f"latency{suffix}_ms"], timed[f"latency{suffix}_fp32_ms"] = round(quantized_ms, 4), round(fp32_ms, 4)
    timed["latency_cpu_vnni"] = has_vnni()
    return timed


def _variant(extra: dict) -> str:
    return "".join(f"_{k}" for k, v in sorted(extra.items()) if v)


def _key(row: dict) -> tuple:
    return row["target"], row["bits"], _variant(row.get("extra") or {})


def load() -> list[dict]:
    path = RESULTS / "targets.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


def save(rows: list[dict]) -> None:
    merged = {_key(r): r for r in load()}
    merged.update({_key(r): r for r in rows})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "targets.json").write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                                      "rows": list(merged.values())}, indent=1))


def _coverage_text(row: dict) -> str:
    if row["runtime"] == "qnn":
        details = row["runtime_details"] or {}
        return "every node on HTP" if isinstance(details, dict) and details.get("on_htp") else f"{row['runtime_coverage']}"
    if row["target"] == "openvino":
        layers = row["runtime_details"].get("layers", {})
        return f"{row['runtime_coverage']:.2f} ({', '.join(f'{k} x{v}' for k, v in layers.items())})"
    if row["target"] == "ort-x86":
        return f"{row['ort_x86_fusion_coverage']:.2f} (onnxruntime fusion)"
    return f"not run here: {row['runtime_details']}; layout {'ok' if not row['layout_problems'] else 'problems'}"


def render() -> str:
    rows = load()
    lines = ["# Deployment targets on ResNet-20 (zero-shot: 256 DGH images, seed 0; FP32 81.03 %)", "",
             "Each file runs in its own runtime; `top-1 ort` is the same file in onnxruntime CPU on the same images, "
             "`reference` the same in unoptimised onnxruntime (the file's exact Q/DQ semantics). "
             "Latency: batch 1 and batch 32 (one call of 32 images), 2 threads, median, the FP32 model in the same runtime "
             "timed in alternating rounds with the file (OpenVINO: its default, bf16 on CPUs that have it, and in brackets "
             "true f32 via INFERENCE_PRECISION_HINT); "
             "timed with the machine alone (`--latency-only`).", "",
             "`CPU`: whether the machine that measured the row (accuracy / latency) had VNNI; rows without the field were "
             "measured on the first AVX2 machine, which had none.", "",
             "| target | bits | runtime | CPU | integer coverage (by that runtime) | SQNR vs reference dB | top-1 runtime % "
             "| top-1 ort % | top-1 reference % | images | batch-1 ms (FP32 ms) | ratio | batch-32 ms (FP32 ms) | ratio |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        timing = []
        for suffix in ("", "_b32"):
            if f"latency{suffix}_ms" in r:
                quantized, fp32, f32 = (r[f"latency{suffix}_ms"], r[f"latency{suffix}_fp32_ms"],
                                        r.get(f"latency{suffix}_f32_hint_ms"))
                f32_time = "" if f32 is None else f"; f32 {f32:.3f}"
                f32_ratio = "" if f32 is None else f" ({quantized / f32:.2f})"
                timing += [f"{quantized:.3f} ({fp32:.3f}{f32_time})", f"{quantized / fp32:.2f}{f32_ratio}"]
            else:
                timing += ["emulator: n/a" if r["runtime"] == "qnn" else "–", ""]
        variant = "".join(f", {k.replace('_', '-')}" for k, v in sorted((r.get("extra") or {}).items()) if v)
        agreement = r.get("agreement_db")
        cpu = " / ".join("VNNI" if r.get(field, False) else "no VNNI" for field in ("cpu_vnni", "latency_cpu_vnni")
                         if field == "cpu_vnni" or "latency_ms" in r)
        lines.append(f"| {r['target']} | {r['bits']} ({r['method']}{variant}) | {r['runtime']} | {cpu} | {_coverage_text(r)} | "
                     f"{'–' if agreement is None else agreement} | "
                     f"{100 * r['top1_runtime']:.2f} | {100 * r['top1_ort_cpu']:.2f} | {100 * r['top1_reference']:.2f} | "
                     f"{r['images']} | {' | '.join(timing)} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "targets.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", type=Path, help="ResNet-20 calibration .npz (zero-shot DGH images)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/targets_bench"))
    parser.add_argument("--only", nargs="+", help="targets to run (default: all rows)")
    parser.add_argument("--bits", nargs="+", help="e.g. W8A8 W4A16")
    parser.add_argument("--limit", type=int, help="test images (default: all 10,000)")
    parser.add_argument("--qnn-sample", type=int, default=1000, help="test images through the HTP emulator")
    parser.add_argument("--runs", type=int, default=300, help="latency runs per model")
    parser.add_argument("--no-latency", action="store_true", help="accuracy only (time latency with the machine alone)")
    parser.add_argument("--latency-only", action="store_true", help="re-time the rows already measured (files in --work)")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if not args.render_only:
        shared = shared_dir()
        args.work.mkdir(parents=True, exist_ok=True)
        model = args.work / "resnet20.onnx"
        if not model.exists():
            api.export_model("resnet20_cifar10", model, weights=shared / "weights" / WEIGHTS)
        test = shared / "datasets" / "cifar10-test-jpg.tar.gz"
        for target, w_bits, a_bits, extra in ROWS:
            if (args.only and target not in args.only) or (args.bits and f"W{w_bits}A{a_bits}" not in args.bits):
                continue
            if args.latency_only:
                row = next((r for r in load() if _key(r) == (target, f"W{w_bits}A{a_bits}", _variant(extra))), None)
                out = args.work / f"resnet20_{target}_w{w_bits}a{a_bits}{_variant(extra)}.onnx"
                if row is None or row["runtime"] == "qnn" or not out.exists():
                    print(f"skipped {target} W{w_bits}A{a_bits}{_variant(extra)}: no measured row or no file {out}")
                    continue
                row.update(latency(row["runtime"], model, out, args.runs))
            else:
                row = measure(target, w_bits, a_bits, extra, model, args.calib, test, args.work, args.limit,
                              args.qnn_sample, args.runs, skip_latency=args.no_latency)
            print(json.dumps({k: v for k, v in row.items() if k != "runtime_details"}), flush=True)
            save([row])
    print(render())


if __name__ == "__main__":
    main()
