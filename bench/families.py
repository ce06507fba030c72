"""The family matrix: every architecture family of models/families.py through export, W8A8 and pdquant W4A4 `fast`.

Usage:
    python bench/families.py                     # all families, both exporters; writes bench/results/families.{json,md}
    python bench/families.py --families vit convnext
    python bench/families.py --render-only

Per family (random weights with non-trivial BN statistics, 3x32x32 inputs) and exporter (torch.onnx
TorchScript with BN kept, torch.onnx dynamo): the executor's parity with onnxruntime on the raw export;
W8A8 (64 Gaussian calibration inputs, MSE, --reduce-range on CPUs without VNNI) with onnxruntime's
integer coverage by ops and by MACs and the ops it leaves in float; the logit SQNR against FP32 on 64
held-out Gaussian inputs; and pdquant W4A4 at the `fast` preset, its wall time and logit SQNR. Run it
alone on the machine: the wall times are the point of the last column.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from toolchain.core.cpu import has_vnni
from toolchain.executor import OnnxModule
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.driver import quantize
from toolchain.quantize.reconstruct import ReconConfig
from toolchain.runtimes.coverage import float_ops_text
from toolchain_models.families import FAMILIES, export_as_users_do, family_model

RESULTS = Path(__file__).resolve().parent / "results"
EXPORTERS = ("torchscript", "dynamo")


def export(name: str, exporter: str, path: Path) -> onnx.ModelProto:
    return onnx.load(str(export_as_users_do(family_model(name), path, exporter)))


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.mean((reference - test) ** 2))
    return float(10 * np.log10(float(np.mean(reference ** 2)) / max(noise, 1e-30)))


def measure(name: str, exporter: str, folder: Path) -> dict:
    model = export(name, exporter, folder / f"{name}_{exporter}.onnx")
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    heldout = np.random.default_rng(1).standard_normal((64, 3, 32, 32)).astype(np.float32)
    fp32 = run_ort(model, heldout)
    with torch.no_grad():
        executed = OnnxModule(model)(torch.from_numpy(heldout)).numpy()
    parity = float(np.abs(executed - fp32).max() / np.abs(fp32).max())
    w8a8 = quantize(model, calib, QuantConfig(reduce_range=has_vnni() is False), progress=False)
    fusion = w8a8.report["fusion"]  # the JSON form of the typed report's FusionReport
    row = {"family": name, "exporter": exporter, "executor_parity": parity,
           "ops_coverage": fusion["coverage"], "mac_coverage": fusion["mac_coverage"],
           "integer_ops": fusion["integer_ops"], "float_ops": len(fusion["float_ops"]),
           "float_ops_left": fusion["float_ops_left"], "fully_integer": fusion["fully_integer"],
           "w8a8_sqnr_db": round(sqnr_db(fp32, run_ort(w8a8.model, heldout)), 2)}
    if exporter == "torchscript":
        started = time.perf_counter()
        w4a4 = quantize(model, calib, QuantConfig(w_bits=4, a_bits=4, reconstruction=ReconConfig.preset("pdquant", "fast")),
                        progress=False)
        row["pdquant_fast_w4a4_s"] = round(time.perf_counter() - started, 1)
        row["pdquant_fast_w4a4_sqnr_db"] = round(sqnr_db(fp32, run_ort(w4a4.model, heldout)), 2)
        row["units"] = len(w4a4.report["reconstruction"]["units"])
        row["unit_notes"] = w4a4.report["reconstruction"]["notes"]
    return row


def render(payload: dict) -> str:
    lines = ["# Family matrix: torchvision's block patterns through the toolchain", "",
             "Small models with each family's block patterns (`models/families.py`, random weights, non-trivial BN "
             "statistics, 3x32x32), exported with torch.onnx as users do. W8A8: 64 Gaussian calibration inputs, MSE "
             f"calibrator{', 8-bit weights in 7 bits (no VNNI)' if payload.get('reduce_range') else ''}; "
             "coverage = share of onnxruntime's compute ops (and of the Conv/Gemm/MatMul MACs) on integer kernels "
             "after its optimisation; SQNR of the logits against FP32 on 64 held-out Gaussian inputs. pdquant W4A4 "
             "`fast`: 64 inputs, wall time of the whole quantize call. Source: `bench/families.py`; machine: "
             f"{payload['machine']}.", "",
             "| family | exporter | executor parity | integer ops | integer MACs | float ops left (onnxruntime) | "
             "W8A8 SQNR dB | pdquant W4A4 fast: s / SQNR dB / units |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for row in payload["rows"]:
        pd = (f"{row['pdquant_fast_w4a4_s']:.1f} / {row['pdquant_fast_w4a4_sqnr_db']:.1f} / {row['units']}"
              if "pdquant_fast_w4a4_s" in row else "")
        macs = f"{row['mac_coverage']:.3f}" if row["mac_coverage"] is not None else "–"
        lines.append(f"| {row['family']} | {row['exporter']} | {row['executor_parity']:.1e} | {row['ops_coverage']:.2f} | {macs} | "
                     f"{float_ops_text(row)} | {row['w8a8_sqnr_db']:.1f} | {pd} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="*", default=sorted(FAMILIES))
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    out = RESULTS / "families.json"
    if not args.render_only:
        torch.set_num_threads(2)
        rows = json.loads(out.read_text())["rows"] if out.exists() else []
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.families:
                for exporter in EXPORTERS:
                    row = measure(name, exporter, Path(tmp))
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows = [r for r in rows if (r["family"], r["exporter"]) != (name, exporter)] + [row]
        rows.sort(key=lambda r: (r["family"], EXPORTERS.index(r["exporter"])))
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, onnxruntime {ort.__version__}"
        out.write_text(json.dumps({"machine": machine, "reduce_range": has_vnni() is False, "rows": rows}, indent=1) + "\n")
    payload = json.loads(out.read_text())
    (RESULTS / "families.md").write_text(render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
