"""The toolchain's quantizer against onnxruntime's `quantize_static` on ResNet-20 (CIFAR-10), side by side.

Usage:
    python bench/quantizer_vs_ort.py                                   # everything: 21 models, 10,000 test images, ~15 min
    python bench/quantizer_vs_ort.py --no-ours                         # the onnxruntime baseline only
    python bench/quantizer_vs_ort.py --limit 1000 --repeats 1 --configs W8A8,W4A4 --out /tmp/q   # quick look
    python bench/quantizer_vs_ort.py --calib-n 512 --seed 1 --work-dir /tmp/qbench              # keep the models
    python bench/quantizer_vs_ort.py --render-only            # rewrite the .md and .png from the .json

Both tools get the same FP32 model (`toolchain export resnet20_cifar10`, BN kept, weights from
$TOOLCHAIN_SHARED/weights) and the same calibration inputs: `--calib-n` images drawn with `--seed` from
$TOOLCHAIN_SHARED/datasets/cifar10-train-jpg.tar.gz, preprocessed as the model's metadata says, saved once
as an .npz (toolchain.data.calibration) and read back by both.

onnxruntime side: `quantize_static`, QDQ, per-channel, QUInt8 activations (QUInt4 at A4), QInt8 weights
(QInt4 at W4), calibrators MinMax and Percentile (ORT defaults, percentile 99.999). quantize_static leaves
BatchNormalization in float between Conv and its Q (the convs then cannot fuse and 4-bit weights are
quantized before BN scales them: W4A8 63 % instead of 70-71 %), so BN is folded first. `--ort-fold toolchain`
(default) gives it the float model our quantizer starts from (toolchain.quantize.driver.prepare_float_model:
clean-up passes + FoldBatchNormPass); `--ort-fold ort` uses ORT's own `quant_pre_process` (shape inference +
basic graph optimisation, which folds Conv+BN). Both folds agree to ~1e-7, yet W4 results differ: ORT's
symmetric int4 scale (2 * absmax / 15) puts each channel's most negative weight exactly on the -7.5 rounding
tie, so it lands on -8 or -7 by the last float bit (17 of 688 channels differ between the two folds; W4A8
MinMax 70.93 % vs 70.15 %). The toolchain fold reproduces the numbers in shared/docs/qdq-conventions.md more
closely. At A4 each calibrator runs twice: the network input at 4 bits (ORT's default) and at 8 bits through
`TensorQuantOverrides` (the protocol's setting, the one our quantizer uses). ORT has no 2-bit types.

Our side: `toolchain.api.quantize_model` with `QuantConfig(w_bits, a_bits, calibrator)` for minmax,
percentile and mse; every layer quantized, network input at 8 bits. When the API function is missing
(older checkout) the quantizer core `toolchain.quantize.driver.quantize` is called instead, and the results
say so; `--no-ours` skips this side.

Every model is evaluated with `toolchain.api.evaluate_model` (top-1, top-1 agreement with FP32) and its
inference timed in onnxruntime (CPU, `--threads` intra-op threads) on the same test images pre-decoded in
memory, in batches of 256: only `session.run` is timed. Each repetition times every model once (rotating the
order), and ratios are taken within a repetition (QDQ / FP32, ours / ORT's model of the same bits and
calibrator), then the median over repetitions is reported. Fusion coverage (Conv/Gemm run on integer kernels
after ORT's optimisation) is counted the same way for both tools (toolchain.runtimes.coverage).
Writes <out>/quantizer_vs_ort.json, .md and .png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from toolchain import api
from toolchain.core.paths import shared_dir
from toolchain.data.calibration import load_calibration, sample_calibration, save_calibration
from toolchain.data.images import open_images
from toolchain.onnxio.preprocessing import read_preprocessing

MODEL = "resnet20_cifar10"
ALL_CONFIGS = ("W8A8", "W4A8", "W4A4", "W2A4")
ORT_CALIBRATORS = ("minmax", "percentile")
OUR_CALIBRATORS = ("minmax", "percentile", "mse")
ORT_BITS = (4, 8)  # QuantType has 4- and 8-bit integer types, nothing smaller
EVAL_BATCH = 256


@dataclass
class Row:
    """One model of the comparison."""

    id: str
    tool: str  # "fp32", "onnxruntime", "toolchain"
    config: str  # "W8A8", ... ("FP32" for the reference)
    w_bits: int | None = None
    a_bits: int | None = None
    input_bits: int | None = None
    calibrator: str | None = None
    path: str | None = None
    quantize_seconds: float | None = None
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None
    n: int | None = None
    top1_timed_pass: float | None = None
    seconds: list[float] = field(default_factory=list)
    time_ratio_vs_fp32: float | None = None
    time_ratio_vs_fp32_best: float | None = None
    ort_pair: str | None = None
    time_ratio_vs_ort: float | None = None
    fusion: dict[str, Any] | None = None
    report_fusion: dict[str, Any] | None = None
    via: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "path"}
        if self.seconds:
            data["seconds_best"] = min(self.seconds)
            data["seconds_median"] = statistics.median(self.seconds)
        return data


def parse_configs(text: str) -> list[str]:
    configs = [c.strip().upper() for c in text.split(",") if c.strip()]
    for c in configs:
        if c not in ALL_CONFIGS:
            raise SystemExit(f"--configs: unknown config {c!r}: choose from {', '.join(ALL_CONFIGS)}")
    return configs


def bits_of(config: str) -> tuple[int, int]:
    w, a = config[1:].split("A")
    return int(w), int(a)


# ---------------------------------------------------------------- onnxruntime side

class NpzReader:
    """An onnxruntime CalibrationDataReader over the calibration inputs, in batches."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch: int = 64) -> None:
        self.batches = iter([{input_name: inputs[i:i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def prepare_for_ort(fp32: Path, out: Path, fold: str) -> dict[str, Any]:
    """The BN-folded float model quantize_static gets: our quantizer's own starting point (fold="toolchain")
    or ORT's quant_pre_process (fold="ort": symbolic shape inference + basic optimisation, folds Conv+BN)."""
    if fold == "toolchain":
        from toolchain.quantize.config import QuantConfig
        from toolchain.quantize.driver import prepare_float_model

        folded, _ = prepare_float_model(onnx.load(str(fp32)), QuantConfig(w_bits=8, a_bits=8))  # 8 bits: opset kept
        onnx.save(folded, str(out))
    else:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(fp32), str(out))
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    if ops["BatchNormalization"]:
        raise RuntimeError(f"quant_pre_process left {ops['BatchNormalization']} BatchNormalization nodes in {out}")
    return dict(sorted(ops.items()))


def quantize_ort(src: Path, out: Path, inputs: np.ndarray, w_bits: int, a_bits: int, input_bits: int, calibrator: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    qtype = {("w", 8): QuantType.QInt8, ("w", 4): QuantType.QInt4, ("a", 8): QuantType.QUInt8, ("a", 4): QuantType.QUInt4}
    input_name = onnx.load(str(src)).graph.input[0].name
    extra: dict[str, Any] = {}
    if input_bits != a_bits:
        extra["TensorQuantOverrides"] = {input_name: [{"quant_type": qtype[("a", input_bits)]}]}
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[calibrator]
    with contextlib.redirect_stdout(sys.stderr):  # the percentile calibrator prints its progress
        quantize_static(str(src), str(out), NpzReader(input_name, inputs), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=qtype[("a", a_bits)], weight_type=qtype[("w", w_bits)],
                        calibrate_method=method, extra_options=extra)


# ---------------------------------------------------------------- our side

def ours_backend() -> tuple[str, Any] | None:
    """("api", toolchain.api.quantize_model) when it exists, else ("core", toolchain.quantize.driver.quantize), else None."""
    if hasattr(api, "quantize_model"):
        return "toolchain.api.quantize_model", api.quantize_model
    try:
        from toolchain.quantize.driver import quantize
    except ImportError:
        return None
    return "toolchain.quantize.driver.quantize (toolchain.api.quantize_model not available yet)", quantize


def quantize_ours(backend: tuple[str, Any], fp32: Path, calib_path: Path, n_calib: int, out: Path, w_bits: int,
                  a_bits: int, calibrator: str) -> dict[str, Any]:
    """Quantize with our toolchain; returns the report's fusion section."""
    from toolchain.quantize.config import QuantConfig

    config = QuantConfig(w_bits=w_bits, a_bits=a_bits, input_bits=8, calibrator=calibrator)
    name, function = backend
    if name == "toolchain.api.quantize_model":
        result = function(fp32, calib_path, out, config, calib_limit=n_calib, overwrite=True, progress=False)
        if getattr(result, "path", None) is not None and Path(result.path) != out:
            raise RuntimeError(f"quantize_model wrote {result.path}, expected {out}")
    else:
        calib = load_calibration(calib_path)
        result = function(onnx.load(str(fp32)), calib.inputs, config, source=str(fp32), calib_info=calib.manifest,
                          progress=False)
        onnx.save(result.model, str(out))
    used = result.report.get("calibration", {}).get("n")
    if used is not None and used != n_calib:
        raise RuntimeError(f"our quantizer calibrated on {used} inputs, not the {n_calib} of {calib_path.name}")
    fusion = result.report.get("fusion", {})
    return {"coverage": fusion.get("coverage"), "float_ops_left": fusion.get("float_ops_left"),
            "integer_layers": fusion.get("integer_layers"), "float_layers": fusion.get("float_layers")}


# ---------------------------------------------------------------- measuring

def fusion_of(path: Path) -> dict[str, Any] | None:
    """The same fusion count for every model (ORT-optimised graph: integer vs float Conv/Gemm, stray Q/DQ)."""
    try:
        from toolchain.runtimes.coverage import fusion_coverage
    except ImportError:
        return None
    f = fusion_coverage(onnx.load(str(path)))
    f = f.to_dict() if hasattr(f, "to_dict") else f  # a FusionReport since #31, a dict before
    return {k: f[k] for k in ("coverage", "integer_layers", "float_layers", "float_ops_left")}


def make_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_models(rows: list[Row], batches: list[np.ndarray], labels: np.ndarray, threads: int, repeats: int,
                log) -> None:
    """Time session.run over all batches, every model once per repetition, rotating the order."""
    live = [r for r in rows if r.path and not r.error]
    sessions = {r.id: make_session(Path(r.path), threads) for r in live}
    name = {r.id: sessions[r.id].get_inputs()[0].name for r in live}
    for r in live:  # warm-up, and the predictions (a check on evaluate_model's top-1)
        predictions = np.concatenate([sessions[r.id].run(None, {name[r.id]: b})[0].argmax(axis=1) for b in batches])
        r.top1_timed_pass = float((predictions == labels).mean())
    for repeat in range(repeats):
        shift = repeat % len(live)
        for r in live[shift:] + live[:shift]:
            session, input_name = sessions[r.id], name[r.id]
            start = time.perf_counter()
            for b in batches:
                session.run(None, {input_name: b})
            r.seconds.append(time.perf_counter() - start)
        log(f"timing repetition {repeat + 1}/{repeats} done")
    fp32 = next(r for r in live if r.tool == "fp32")
    by_id = {r.id: r for r in live}
    for r in live:
        r.time_ratio_vs_fp32 = statistics.median(s / f for s, f in zip(r.seconds, fp32.seconds))
        r.time_ratio_vs_fp32_best = min(r.seconds) / min(fp32.seconds)
        if r.ort_pair and r.ort_pair in by_id:
            pair = by_id[r.ort_pair]
            r.time_ratio_vs_ort = statistics.median(s / p for s, p in zip(r.seconds, pair.seconds))


def ort_pair_for(config: str, calibrator: str) -> str:
    """The ORT model ours is compared with: same bits, same calibrator (MinMax for mse), input at 8 bits."""
    return f"ort/{config}/{calibrator if calibrator in ORT_CALIBRATORS else 'minmax'}/in8"


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(ALL_CONFIGS), help=f"comma-separated, from {','.join(ALL_CONFIGS)}")
    parser.add_argument("--calib-n", type=int, default=512, help="calibration images from the training set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on a random subset of this many test images")
    parser.add_argument("--ours", action=argparse.BooleanOptionalAction, default=True, help="run our quantizer too")
    parser.add_argument("--ort", action=argparse.BooleanOptionalAction, default=True, help="run onnxruntime quantize_static")
    parser.add_argument("--ort-fold", choices=("toolchain", "ort"), default="toolchain",
                        help="who folds BN before quantize_static: our FoldBatchNormPass or ORT's quant_pre_process")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads for evaluation and timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the test set per model (0: no timing)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the models here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--render-only", action="store_true",
                        help="only rewrite <out>/quantizer_vs_ort.md and .png from <out>/quantizer_vs_ort.json")
    args = parser.parse_args(argv)
    if args.render_only:
        result = json.loads((args.out / "quantizer_vs_ort.json").read_text())
        (args.out / "quantizer_vs_ort.md").write_text(_markdown(result))
        _plot(result, args.out / "quantizer_vs_ort.png")
        return 0
    configs = parse_configs(args.configs)
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's "consider pre-processing" / per-node chatter

    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    shared = shared_dir()
    train, test = shared / "datasets" / "cifar10-train-jpg.tar.gz", shared / "datasets" / "cifar10-test-jpg.tar.gz"
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="quantizer_vs_ort-")))
        work.mkdir(parents=True, exist_ok=True)
        fp32_path = work / "resnet20_fp32.onnx"
        api.export_model(MODEL, fp32_path, overwrite=True)
        pre = read_preprocessing(onnx.load(str(fp32_path)))
        calib_path = work / f"calib_real{args.calib_n}_seed{args.seed}.npz"
        save_calibration(calib_path, sample_calibration(train, pre, n=args.calib_n, seed=args.seed))
        calib = load_calibration(calib_path)
        log(f"exported {fp32_path.name}; {len(calib)} calibration images (seed {args.seed}) in {calib_path.name}")

        rows = [Row(id="fp32", tool="fp32", config="FP32", path=str(fp32_path))]
        notes: list[str] = []
        ort_prepared: dict[str, Any] | None = None
        if args.ort:
            ort_src = work / f"resnet20_fp32_bnfolded_{args.ort_fold}.onnx"
            ort_prepared = prepare_for_ort(fp32_path, ort_src, args.ort_fold)
            for config in configs:
                w, a = bits_of(config)
                if w not in ORT_BITS or a not in ORT_BITS:
                    notes.append(f"onnxruntime: {config} skipped (quantize_static has no {min(w, a)}-bit type)")
                    continue
                for calibrator in ORT_CALIBRATORS:
                    for input_bits in sorted({a, 8}):
                        row = Row(id=f"ort/{config}/{calibrator}/in{input_bits}", tool="onnxruntime", config=config,
                                  w_bits=w, a_bits=a, input_bits=input_bits, calibrator=calibrator, via="quantize_static")
                        out = work / f"ort_{config}_{calibrator}_in{input_bits}.onnx"
                        tick = time.perf_counter()
                        try:
                            quantize_ort(ort_src, out, calib.inputs, w, a, input_bits, calibrator)
                            row.path = str(out)
                        except Exception as err:  # noqa: BLE001 - record and go on with the other models
                            row.error = f"{type(err).__name__}: {err}"
                            traceback.print_exc()
                        row.quantize_seconds = round(time.perf_counter() - tick, 2)
                        rows.append(row)
                        log(f"quantized {row.id} ({row.quantize_seconds}s){' FAILED' if row.error else ''}")
        backend = ours_backend() if args.ours else None
        if args.ours and backend is None:
            notes.append("ours: skipped, this checkout has no quantizer (toolchain.api.quantize_model / toolchain.quantize)")
        elif not args.ours:
            notes.append("ours: not run (--no-ours)")
        elif backend[0] != "toolchain.api.quantize_model":
            notes.append(f"ours: run through {backend[0]}")
        if backend is not None:
            for config in configs:
                w, a = bits_of(config)
                for calibrator in OUR_CALIBRATORS:
                    row = Row(id=f"ours/{config}/{calibrator}", tool="toolchain", config=config, w_bits=w, a_bits=a,
                              input_bits=8, calibrator=calibrator, via=backend[0].split(" ")[0],
                              ort_pair=ort_pair_for(config, calibrator) if args.ort else None)
                    out = work / f"ours_{config}_{calibrator}.onnx"
                    tick = time.perf_counter()
                    try:
                        row.report_fusion = quantize_ours(backend, fp32_path, calib_path, len(calib), out, w, a, calibrator)
                        row.path = str(out)
                    except Exception as err:  # noqa: BLE001
                        row.error = f"{type(err).__name__}: {err}"
                        traceback.print_exc()
                    row.quantize_seconds = round(time.perf_counter() - tick, 2)
                    rows.append(row)
                    log(f"quantized {row.id} ({row.quantize_seconds}s){' FAILED' if row.error else ''}")

        for row in rows:
            if row.error:
                continue
            try:
                ref = None if row.tool == "fp32" else fp32_path
                result = api.evaluate_model(row.path, test, reference=ref, limit=args.limit, batch_size=EVAL_BATCH,
                                            threads=args.threads, seed=0, progress=False)
                row.top1, row.top5, row.agreement, row.n = result.top1, result.top5, result.agreement, result.n
                if row.tool != "fp32":
                    row.fusion = fusion_of(Path(row.path))
            except Exception as err:  # noqa: BLE001
                row.error = f"{type(err).__name__}: {err}"
                traceback.print_exc()
            log(f"evaluated {row.id}: top-1 {row.top1}, agreement {row.agreement}")

        if args.repeats > 0:
            data = open_images(test, pre, limit=args.limit, seed=0)  # the sample evaluate_model used
            batches = [b for b, _ in data.batches(EVAL_BATCH)]
            time_models(rows, batches, data.labels, args.threads, args.repeats, log)
        else:
            notes.append("inference not timed (--repeats 0)")
        for row in rows:
            if row.top1 is not None and row.top1_timed_pass is not None and abs(row.top1 - row.top1_timed_pass) > 1e-9:
                notes.append(f"{row.id}: top-1 of the timed pass {row.top1_timed_pass:.4f} differs from evaluate_model's {row.top1:.4f}")

    result = {
        "benchmark": "quantizer_vs_ort",
        "model": f"{MODEL} (ResNet-20, CIFAR-10), exported by toolchain with BN kept",
        "calibration": {"source": "shared/datasets/cifar10-train-jpg.tar.gz", "n": len(calib), "seed": args.seed,
                        "sampler": "toolchain.data.calibration.sample_calibration, saved as .npz, read back by both tools"},
        "test": {"source": "shared/datasets/cifar10-test-jpg.tar.gz", "n": rows[0].n, "limit": args.limit},
        "onnxruntime_setup": {
            "function": "onnxruntime.quantization.quantize_static",
            "bn_fold": args.ort_fold,
            "preparation": {"toolchain": "toolchain.quantize.driver.prepare_float_model (clean-up + FoldBatchNormPass), "
                            "the float model our quantizer starts from",
                            "ort": "onnxruntime.quantization.shape_inference.quant_pre_process (folds Conv+BN)"}[args.ort_fold],
            "prepared_ops": ort_prepared,
            "quant_format": "QDQ", "per_channel": True, "activation_type": "QUInt8 (QUInt4 at A4)",
            "weight_type": "QInt8 (QInt4 at W4)", "calibrators": "MinMax, Percentile (CalibPercentile default 99.999)",
            "input_8bit_variant": "extra_options TensorQuantOverrides {input: [{quant_type: QUInt8}]}",
            "calibration_batch": 64,
        },
        "ours_setup": {"via": backend[0] if backend else None, "input_bits": 8, "all_layers": True,
                       "calibrators": list(OUR_CALIBRATORS), "percentile": 99.99} if backend else None,
        "timing": {"threads": args.threads, "batch": EVAL_BATCH, "repeats": args.repeats,
                   "what": "session.run over the pre-decoded test inputs; ratios per repetition, median reported"},
        "configs": configs,
        "rows": [r.to_dict() for r in rows],
        "notes": notes,
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "processor": _cpu_name(),
                    "cpus": os.cpu_count()},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantizer_vs_ort.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = _markdown(result)
    (args.out / "quantizer_vs_ort.md").write_text(markdown)
    plotted = _plot(result, args.out / "quantizer_vs_ort.png")
    if not plotted:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
    print(markdown)
    return 1 if any(r.error for r in rows) else 0


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


# ---------------------------------------------------------------- output

COLUMNS = (  # (row id template, header)
    ("ort/{c}/minmax/in{a}", "ORT MinMax"),
    ("ort/{c}/percentile/in{a}", "ORT Percentile"),
    ("ort/{c}/minmax/in8", "ORT MinMax, 8-bit input"),
    ("ort/{c}/percentile/in8", "ORT Percentile, 8-bit input"),
    ("ours/{c}/minmax", "ours minmax"),
    ("ours/{c}/percentile", "ours percentile"),
    ("ours/{c}/mse", "ours mse"),
)


def _cell_id(template: str, config: str) -> str:
    return template.format(c=config, a=bits_of(config)[1])


def _table(result: dict, rows: dict, value) -> str:
    head = "| bits | " + " | ".join(h for _, h in COLUMNS) + " |\n|---|" + "---:|" * len(COLUMNS) + "\n"
    lines = []
    for config in result["configs"]:
        cells = []
        for template, _ in COLUMNS:
            rid = _cell_id(template, config)
            if "/in8" in template and bits_of(config)[1] == 8:
                cells.append("(= left)")
                continue
            row = rows.get(rid)
            cells.append("—" if row is None else "error" if row.get("error") else value(row))
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def _markdown(r: dict) -> str:
    rows = {row["id"]: row for row in r["rows"]}
    fp32 = rows["fp32"]
    ort_setup, ours = r["onnxruntime_setup"], r["ours_setup"]
    out = ["# Our quantizer vs onnxruntime `quantize_static` — ResNet-20, CIFAR-10\n"]
    out.append(
        f"Budget: **{r['calibration']['n']} real calibration images** from `cifar10-train-jpg.tar.gz`, seed "
        f"{r['calibration']['seed']}, the same .npz for both tools; no data generation, no reconstruction "
        f"(calibrators only). Test: {r['test']['n']} images of `cifar10-test-jpg.tar.gz`"
        f"{' (random subset, --limit)' if r['test']['limit'] else ' (all)'}. Machine: {r['machine']['processor']}, "
        f"{r['machine']['cpus']} CPUs; onnxruntime {r['versions']['onnxruntime']}, onnx {r['versions']['onnx']}, "
        f"Python {r['versions']['python']}. FP32 (exported with BN kept): top-1 **{_pct(fp32['top1'])} %**.\n")
    if any(row["tool"] == "onnxruntime" for row in r["rows"]):
        out.append(
            f"onnxruntime: `quantize_static`, QDQ, per-channel, QUInt8/QUInt4 activations, QInt8/QInt4 weights, "
            f"Percentile at ORT's default 99.999; BN folded first by {ort_setup['preparation']} (on the unfolded graph "
            "quantize_static leaves BN in float and the convs unfused). \"8-bit input\" = network input kept at QUInt8 "
            "via `TensorQuantOverrides` (differs only at A4). onnxruntime's quantizer has no 2-bit types. At W4, "
            "quantize_static's symmetric int4 scale (2 * absmax / 15) puts each channel's most negative weight exactly "
            "on the -7.5 rounding tie, so float noise of ~1e-7 in the folded weights moves W4 results by up to ~1 pp "
            "(ORT's own BN fold: W4A8 MinMax 70.15 %, the toolchain's: 70.93 %).\n")
    else:
        out.append("onnxruntime: not run (--no-ort).\n")
    if ours:
        out.append(f"Ours: {ours['via']}, `QuantConfig(w_bits, a_bits, calibrator)`, every layer quantized, "
                   "network input at 8 bits (the protocol setting), percentile 99.99.\n")
    else:
        out.append("Ours: not run.\n")

    out.append("## Top-1 (%)\n")
    out.append(_table(r, rows, lambda row: _pct(row["top1"])))
    out.append("\n## Top-1 agreement with FP32 (%)\n")
    out.append(_table(r, rows, lambda row: _pct(row["agreement"])))
    t = r["timing"]
    if not fp32.get("seconds"):
        t = None
    if t:
        out.append(f"\n## Inference time, QDQ / FP32 (median of {t['repeats']} per-repetition ratios; "
                   f"{t['threads']} threads, batch {t['batch']}, session.run only)\n")
        out.append(f"FP32: {min(fp32['seconds']):.2f} s best, {statistics.median(fp32['seconds']):.2f} s median for "
                   f"{fp32['n']} images (absolute seconds are for this run only).\n")
        out.append(_table(r, rows, lambda row: "—" if row.get("time_ratio_vs_fp32") is None else f"{row['time_ratio_vs_fp32']:.2f}x"))
    if any(row.get("time_ratio_vs_ort") is not None for row in r["rows"]):
        out.append("\n## Inference time, ours / onnxruntime's model of the same bits (8-bit input; same calibrator, "
                   "MinMax for mse)\n")
        out.append("| bits | ours minmax | ours percentile | ours mse |\n|---|---:|---:|---:|")
        for config in r["configs"]:
            cells = [rows.get(f"ours/{config}/{c}", {}).get("time_ratio_vs_ort") for c in OUR_CALIBRATORS]
            out.append(f"| {config} | " + " | ".join("—" if x is None else f"{x:.2f}x" for x in cells) + " |")
        out.append("")
    out.append("\n## Fusion coverage (Conv/Gemm on integer kernels after onnxruntime's optimisation)\n")
    out.append(_table(r, rows, lambda row: "—" if not row.get("fusion") else
                      f"{row['fusion']['integer_layers']}/{row['fusion']['integer_layers'] + row['fusion']['float_layers']}"))
    reported: dict[str, list[tuple[str, dict]]] = {}
    for row in r["rows"]:
        if row.get("report_fusion"):
            reported.setdefault(row["config"], []).append((row["calibrator"], row["report_fusion"]))
    if reported:
        out.append("\nOur quantizer's report (`report[\"fusion\"]`):\n")
        out.append("| bits | calibrators | coverage | float ops left |\n|---|---|---:|---|")
        for config, entries in reported.items():
            groups: dict[str, list[str]] = {}
            for calibrator, f in entries:
                key = json.dumps([f.get("coverage"), f.get("float_ops_left") or {}], sort_keys=True)
                groups.setdefault(key, []).append(calibrator)
            for key, calibrators in groups.items():
                coverage, left = json.loads(key)
                ops = ", ".join(f"{op} {n}" for op, n in left.items()) or "none"
                shown = "—" if coverage is None else f"{coverage:.2f}"
                out.append(f"| {config} | {', '.join(calibrators)} | {shown} | {ops} |")
        out.append("")
    if any(row["config"].startswith("W2") and row.get("top1") is not None for row in r["rows"]):
        r = {**r, "notes": r["notes"] + ["W2 rows use calibrators only (no reconstruction): about 10 % is chance "
                                         "level for 10 classes."]}
    errors = [row for row in r["rows"] if row.get("error")]
    if errors or r["notes"]:
        out.append("\n## Notes\n")
        out.extend(f"- {n}" for n in r["notes"])
        out.extend(f"- {row['id']}: {row['error']}" for row in errors)
        out.append("")
    out.append(f"\nWall time of the whole benchmark: {r['wall_seconds']:.0f} s. Rows, per-repetition seconds and "
               "quantization times: `quantizer_vs_ort.json`.\n")
    return "\n".join(out)


def _plot(r: dict, path: Path) -> bool:
    """Top-1 per bit-width, one bar per (tool, calibrator, input bits) that ran; FP32 as a dashed line."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = {row["id"]: row for row in r["rows"]}
    colors = {"ORT MinMax": "#c6dbef", "ORT Percentile": "#6baed6", "ORT MinMax, 8-bit input": "#4292c6",
              "ORT Percentile, 8-bit input": "#08519c", "ours minmax": "#fdae6b", "ours percentile": "#f16913",
              "ours mse": "#a63603"}
    configs = r["configs"]
    fig, ax = plt.subplots(figsize=(3 + 1.9 * len(configs), 4.8))
    width, used = 0.8 / len(COLUMNS), []
    for i, config in enumerate(configs):
        # At A8 the "8-bit input" variants are the plain ones: each model once, bars centred on the tick.
        bars = []
        for template, header in COLUMNS:
            if "/in8" in template and bits_of(config)[1] == 8:
                continue
            row = rows.get(_cell_id(template, config))
            if row is not None and row.get("top1") is not None:
                bars.append((header, 100 * row["top1"]))
        for k, (header, top1) in enumerate(bars):
            x = i + (k - (len(bars) - 1) / 2) * width
            ax.bar(x, top1, width, color=colors[header])
            ax.text(x, top1 + 1, f"{top1:.1f}", ha="center", va="bottom", rotation=90, fontsize=6,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.3, "alpha": 0.8})
            if header not in used:
                used.append(header)
    handles = [Patch(color=colors[h], label=h) for _, h in COLUMNS if h in used]
    fp32 = rows["fp32"]["top1"]
    if fp32 is not None:
        handles.append(ax.axhline(100 * fp32, color="black", linestyle="--", linewidth=1, label=f"FP32 {100 * fp32:.2f} %"))
    ax.set_xticks(range(len(configs)), configs)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"ResNet-20 CIFAR-10: our quantizer vs onnxruntime quantize_static\n"
                 f"{r['calibration']['n']} real calibration images (seed {r['calibration']['seed']}), "
                 f"{r['test']['n']} test images", fontsize=10)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


if __name__ == "__main__":
    sys.exit(main())
