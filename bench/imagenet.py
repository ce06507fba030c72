"""Pretrained ImageNet models (EfficientNet-Lite0, MobileNetV2) quantized zero-shot and with real data, on the
500 real ImageNet photographs of $TOOLCHAIN_SHARED/datasets, beside onnxruntime's `quantize_static`.

Usage:
    python bench/imagenet.py                                   # the default rows (README table), resumable
    python bench/imagenet.py --models efficientnet_lite0 --rows "ours:W8A8:dgh64,ours:W8A8:dgh64:nearest"
    python bench/imagenet.py --rows "ort:W8A8:real256:minmax" --work /tmp/imagenet
    python bench/imagenet.py --render-only                     # rewrite the .md from the .json

A row is TOOL:CONFIG:CALIB[:OPTION...]:
    fp32                               the exported model itself
    ours:W8A8:dgh64                    `toolchain quantize` with the defaults on 64 DGH images (preset cpu)
    ours:W4A8:dgh64:pdquant-cpu        ... with --reconstruct pdquant --preset cpu; `nearest` = --weight-rounding nearest,
                                       `mse` / `minmax` / `percentile` = --calibrator; with reconstruction `gptq`
                                       = AdaRound from GPTQ's integers, `itN` = --recon-iterations N, `wbB` =
                                       mixed precision: --weight-bits-budget B with the config's weight bits or 8
    ours:W8A8:dgh64:openvino           the W8A8 file of that row evaluated in OpenVINO (runtime rows reuse the file)
    ours:W8A8:dgh64:tgtqnn:n50:qnn     `--target qnn` (batch 1), evaluated in QNN HTP (x86 emulator) on a seeded
                                       50-image sample (`nN` = evaluate --limit N; the emulator is slow)
    ort:W8A8:real256:minmax            onnxruntime quantize_static (QDQ, per-channel, MinMax or Percentile) on the
                                       BN-folded float model our quantizer starts from (bench/quantizer_vs_ort.py)
    nncf:W8A8:real256                  NNCF's nncf.quantize with its defaults (fast bias correction) on that model
CALIB: dgh64 / bns64 / gaussian64 (zero-shot, `toolchain generate --preset cpu`, seed 0; dgh64s1 = seed 1), fdda64
(few-shot: class centres from one photograph of each of the sample's 500 classes, `--fdda-classes present`; the
photographs are also the evaluation images) or realN: N images drawn with seed 0 from the 500 photographs, which are
also the evaluation images (a real-data baseline, not a zero-shot one).

Every stage runs as its own process (bench/measure.py): wall seconds and peak resident memory per stage.
Accuracy is `toolchain evaluate --reference FP32 --json` on all 500 images: top-1 with n, and the top-1
agreement with the FP32 model beside it. Results accumulate in bench/results/imagenet.json (a row already
there is skipped: rerun after a stop and it continues) and render to bench/results/imagenet.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

from measure import run_stage

from toolchain.core.paths import shared_dir

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("efficientnet_lite0", "mobilenetv2_imagenet")
DEFAULT_ROWS = ("fp32", "ort:W8A8:real256:minmax", "ort:W8A8:real256:percentile", "nncf:W8A8:real256", "ours:W8A8:real256:nearest",
                "ours:W8A8:real256", "ours:W8A8:dgh64:nearest", "ours:W8A8:dgh64", "ours:W4A8:dgh64",
                "ours:W8A8:dgh64:openvino")
GENERATED = ("dgh", "bns", "fdda", "gaussian")
RUNTIMES = ("openvino", "qnn")


def data_path() -> Path:
    return shared_dir() / "datasets" / "imagenet-sample-500.tar"


def calibration(model: str, fp32: Path, source: str, work: Path, env: dict, stages: list) -> Path:
    """The calibration .npz of `source` (dgh64, dgh64s1, fdda64, real256, ...), made once per model and reused by every row."""
    path = work / f"{model}_{source}.npz"
    if path.exists():
        return path
    match = re.fullmatch(r"([a-z]+)(\d+)(?:s(\d+))?", source)
    if match is None:
        raise SystemExit(f"unknown calibration source {source!r}: dgh64, bns64, fdda64, gaussian64 (+ sSEED) or realN")
    method, n, seed = match.group(1), int(match.group(2)), match.group(3) or "0"
    if method in GENERATED:
        resume = ["--resume"] if path.with_name(path.name + ".ckpt").exists() else []  # continue a stopped run
        # FDDA's class centres come from the sample's photographs: 500 of the 1000 classes, so only those are synthesised
        few_shot = ["--data", str(data_path()), "--fdda-classes", "present"] if method == "fdda" else []
        stages.append(run_stage(f"generate {source}", ["generate", str(fp32), "--method", method, "-n", str(n),
                                                        "--preset", "cpu", "--seed", seed, "-o", str(path), *few_shot,
                                                        *resume], env))
    elif method == "real" and seed == "0":
        _sample_real(fp32, n, path)
    else:
        raise SystemExit(f"unknown calibration source {source!r}: dgh64, bns64, fdda64, gaussian64 (+ sSEED) or realN")
    return path


def _sample_real(fp32: Path, n: int, path: Path) -> None:
    import onnx

    from toolchain.data.calibration import sample_calibration, save_calibration
    from toolchain.onnxio.preprocessing import read_preprocessing

    pre = read_preprocessing(onnx.load(str(fp32), load_external_data=False))
    save_calibration(path, sample_calibration(data_path(), pre, n, seed=0))


def _is_limit(option: str) -> bool:
    return option.startswith("n") and option[1:].isdigit()


def quantize_args(config: str, options: list[str]) -> list[str]:
    w_bits, a_bits = config[1:].split("A")
    args = ["--w-bits", w_bits, "--a-bits", a_bits]
    for option in options:
        if option in ("nearest", "gptq"):
            args += ["--weight-rounding", option]
        elif option.startswith("it") and option[2:].isdigit():
            args += ["--recon-iterations", option[2:]]
        elif option.startswith("wb") and option[2:].replace(".", "", 1).isdigit():
            args += ["--weight-bits-budget", option[2:], "--w-bits-choices", f"{w_bits},8"]
        elif option in ("mse", "minmax", "percentile"):
            args += ["--calibrator", option]
        elif option.startswith(("pdquant-", "brecq-")):
            method, preset = option.split("-")
            args += ["--reconstruct", method, "--preset", preset]
        elif option.startswith("tgt"):
            args += ["--target", option[3:]]
        elif option not in RUNTIMES and not _is_limit(option):
            raise SystemExit(f"unknown row option {option!r}")
    return args


def run_row(model: str, row: str, fp32: Path, work: Path, env: dict) -> dict:
    """Make (or reuse) the row's model, evaluate it; the stages' seconds and peak memory."""
    stages: list[dict] = []
    parts = row.split(":")
    if parts[0] == "fp32":
        path = fp32
    else:
        tool, config, source, *options = parts
        calib = calibration(model, fp32, source, work, env, stages)
        made = [o for o in options if o not in RUNTIMES and not _is_limit(o)]
        path = work / f"{model}_{tool}_{config}_{source}{''.join('_' + o for o in made)}.onnx"
        if not path.exists():
            if tool == "ours":
                stages.append(run_stage(f"quantize {row}", ["quantize", str(fp32), "--calib", str(calib), "-o", str(path),
                                                            *quantize_args(config, options), "--quiet", "--overwrite"], env))
            elif tool == "ort":
                stages.append(run_stage(f"ort {row}", [str(fp32), str(calib), str(path), config, options[0]], env,
                                        prefix=[sys.executable, __file__, "--ort-quantize"]))
            elif tool == "nncf":
                stages.append(run_stage(f"nncf {row}", [str(fp32), str(calib), str(path), config], env,
                                        prefix=[sys.executable, __file__, "--nncf-quantize"]))
            else:
                raise SystemExit(f"unknown tool {tool!r} in row {row!r}: fp32, ours, ort or nncf")
    runtime = next((o for o in parts[3:] if o in RUNTIMES), "ort")
    limit = [["--limit", o[1:]] for o in parts[3:] if _is_limit(o)]
    evaluation = run_stage(f"evaluate {row}", ["evaluate", str(path), "--data", str(data_path()), "--reference", str(fp32),
                                               "--runtime", runtime, *(limit[0] if limit else []), "--json", "--quiet"], env)
    result = json.loads(evaluation["stdout"].splitlines()[-1])
    stages.append({k: v for k, v in evaluation.items() if k != "stdout"})
    for stage in stages:
        stage.pop("stdout", None)
    return {"model": model, "row": row, "n": result["n"], "top1": result["top1"],
            "agreement": result.get("agreement"), "runtime": runtime, "stages": stages}


def ort_quantize(fp32: str, calib: str, out: str, config: str, calibrator: str) -> None:
    """`--ort-quantize`: onnxruntime's quantize_static on the BN-folded model, in this process (a stage)."""
    from quantizer_vs_ort import prepare_for_ort, quantize_ort

    from toolchain.data.calibration import load_calibration

    folded = Path(out).with_suffix(".folded.onnx")
    prepare_for_ort(Path(fp32), folded, "toolchain")
    w_bits, a_bits = (int(b) for b in config[1:].split("A"))
    quantize_ort(folded, Path(out), load_calibration(Path(calib)).inputs, w_bits, a_bits, 8, calibrator)
    folded.unlink()


def nncf_quantize(fp32: str, calib: str, out: str, config: str) -> None:
    """`--nncf-quantize`: NNCF's `nncf.quantize` (its defaults: per-channel symmetric weights, fast bias
    correction) on the same BN-folded model and images as onnxruntime's rows, in this process (a stage)."""
    try:
        import nncf
    except ImportError:
        raise SystemExit("nncf rows need NNCF: pip install nncf (3.4 measured)") from None
    import onnx
    from quantizer_vs_ort import prepare_for_ort

    from toolchain.data.calibration import load_calibration

    if config != "W8A8":
        raise SystemExit(f"nncf rows are W8A8 (NNCF's ONNX backend quantizes to 8 bits), not {config}")
    folded = Path(out).with_suffix(".folded.onnx")
    prepare_for_ort(Path(fp32), folded, "toolchain")
    model = onnx.load(str(folded))
    inputs = load_calibration(Path(calib)).inputs
    name = model.graph.input[0].name
    dataset = nncf.Dataset([inputs[i:i + 1] for i in range(len(inputs))], lambda x: {name: x})
    quantized = nncf.quantize(model, dataset, subset_size=len(inputs))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(onnx.load(fp32, load_external_data=False).metadata_props)  # preprocessing, classes
    onnx.save(quantized, out)
    folded.unlink()


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


def save(path: Path, rows: list[dict]) -> None:
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform()}
    path.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")


def render(path: Path) -> None:
    rows = load(path)
    fp32 = {r["model"]: r["top1"] for r in rows if r["row"] == "fp32"}
    lines = ["# Pretrained ImageNet models: zero-shot and real-data quantization (bench/imagenet.py)", "",
             f"Top-1 on the {rows[0]['n'] if rows else 500} real ImageNet photographs of shared/datasets (one per even class), "
             "agreement = top-1 agreement with the FP32 model on the same images. realN rows calibrate on N of these "
             "same photographs (not zero-shot); fdda rows take their class centres from them (few-shot, 1 per class); "
             "dgh/bns/gaussian rows never see a real image (sSEED: generation seed, 0 otherwise). Seconds and peak memory "
             "are per stage, each its own process, on the machine in imagenet.json.", "",
             "| model | row | runtime | top-1 % | vs FP32 | agreement % | stages (s, peak GB) |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        drop = r["top1"] - fp32[r["model"]] if r["model"] in fp32 and r["row"] != "fp32" else None
        stages = "; ".join(f"{s['stage'].split(' ')[0]} {s['seconds']:.0f} s {s['peak_rss_gb']:.1f} GB" for s in r["stages"])
        drop_text = "" if drop is None else f"{100 * drop:+.1f}"
        agreement = "" if r["agreement"] is None else f"{100 * r['agreement']:.1f}"
        lines.append(f"| {r['model']} | `{r['row']}` | {r['runtime']} | {100 * r['top1']:.1f} | {drop_text} | "
                     f"{agreement} | {stages} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--ort-quantize":
        ort_quantize(*sys.argv[2:7])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--nncf-quantize":
        nncf_quantize(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/imagenet_bench"))
    parser.add_argument("--results", type=Path, default=RESULTS / "imagenet.json")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--redo", action="store_true", help="measure rows again that the results already hold")
    args = parser.parse_args()
    if not args.render_only:
        args.work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        rows = load(args.results)
        for model in args.models.split(","):
            fp32 = args.work / f"{model}.onnx"
            if not fp32.exists():
                run_stage(f"export {model}", ["export", model, "-o", str(fp32)], env)
            for row in args.rows.split(","):
                done = [r for r in rows if r["model"] == model and r["row"] == row]
                if done and not args.redo:
                    continue
                rows = [r for r in rows if r not in done] + [run_row(model, row, fp32, args.work, env)]
                save(args.results, rows)
    render(args.results)


if __name__ == "__main__":
    main()
