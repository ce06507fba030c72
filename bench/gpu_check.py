"""GPU parity and speed: the torch stages on CUDA against the CPU, for a machine that has a GPU.

Usage:
    python bench/gpu_check.py                  # parity (small, seconds) then speed (minutes); writes bench/results/gpu_check.json
    python bench/gpu_check.py --parity-only    # what to run when device time is short

Parity (same seed, same inputs; GPU convolutions use other algorithms, so equality is not expected):
- generate: DGH `fast` on the random ResNet-20 with data BN statistics, --device cpu vs cuda: the final
  BN distance of the two sets within 5 % of each other;
- quantize: W4A4 pdquant `fast` from the same calibration set on cpu vs cuda: the fraction of equal
  4-bit weight integers (reported) and the output SQNR against FP32 of both models (within 1 dB).
Speed: s/iteration of DGH on ResNet-18 @224 (64 images, batch 32) and the wall time of W4A4 pdquant
(100 iterations per unit, batch 8) on it, on cuda and, for the ratio, the CPU numbers of bench/scale.py.
Exits 1 when a parity check fails. Without a GPU it says so and exits 0 (nothing to check).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gpu_check.json"


def _export(factory, size: int, folder: Path, name: str) -> Path:
    from toolchain.export.exporter import export_to_onnx
    from toolchain.onnxio.files import save_model
    from toolchain.onnxio.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    path = folder / f"{name}.onnx"
    pre = Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(size, size))
    save_model(export_to_onnx(factory(), torch.zeros(1, 3, size, size), pre), path)
    return path


def _resnet20_data_bn():
    from toolchain.export.zoo import load_zoo_model
    from toolchain_models.statistics import with_data_statistics

    torch.manual_seed(0)
    return with_data_statistics(load_zoo_model("resnet20_cifar10").module, (8, 3, 32, 32))


def parity(folder: Path) -> dict:
    from toolchain import api
    from toolchain.core.execution import Execution
    from toolchain.quantize.config import QuantConfig
    from toolchain.quantize.reconstruct import ReconConfig

    model = _export(_resnet20_data_bn, 32, folder, "r20")
    distances, paths = {}, {}
    for device in ("cpu", "cuda"):
        paths[device] = folder / f"dgh_{device}.npz"
        outcome = api.generate_calibration(model, "dgh", 64, paths[device], preset_name="fast", seed=0, progress=False,
                                           overwrite=True, execution=Execution(device=device))
        distances[device] = outcome.manifest["losses"]["final"]["bn_distance"]
    config = QuantConfig(w_bits=4, a_bits=4, reconstruction=ReconConfig.preset("pdquant", "fast", seed=0))
    sqnr, integers = {}, {}
    for device in ("cpu", "cuda"):
        out = folder / f"q_{device}.onnx"
        result = api.quantize_model(model, paths["cpu"], out, config, overwrite=True, progress=False,
                                    execution=Execution(device=device))
        sqnr[device] = result.report["summary"]["output_sqnr_db"]
        integers[device] = {i.name: numpy_helper.to_array(i).astype(np.int64) for i in onnx.load(str(out)).graph.initializer
                            if i.name.endswith("weight_quantized")}
    equal = sum(int((integers["cpu"][k] == integers["cuda"][k]).sum()) for k in integers["cpu"])
    total = sum(v.size for v in integers["cpu"].values())
    checks = {"generate_bn_distance_relative": abs(distances["cuda"] - distances["cpu"]) / distances["cpu"],
              "quantize_sqnr_db_difference": abs(sqnr["cuda"] - sqnr["cpu"])}
    return {"bn_distance": distances, "output_sqnr_db": sqnr, "weight_integers_equal": equal / total, "checks": checks,
            "passed": checks["generate_bn_distance_relative"] <= 0.05 and checks["quantize_sqnr_db_difference"] <= 1.0}


def speed(folder: Path) -> dict:
    from toolchain import api
    from toolchain.core.execution import Execution
    from toolchain.quantize.config import QuantConfig
    from toolchain.quantize.reconstruct import ReconConfig
    from toolchain_models.statistics import resnet18_data_bn

    model = _export(resnet18_data_bn, 224, folder, "r18")
    calib = folder / "r18_dgh64.npz"
    started = time.perf_counter()
    outcome = api.generate_calibration(model, "dgh", 64, calib, batch_size=32, iterations=100, seed=0, progress=False,
                                       overwrite=True, execution=Execution(device="cuda"))
    generate_s = time.perf_counter() - started
    recon = ReconConfig.preset("pdquant", "default", iterations=100, batch_size=8, seed=0)
    started = time.perf_counter()
    api.quantize_model(model, calib, folder / "r18_w4a4.onnx", QuantConfig(w_bits=4, a_bits=4, reconstruction=recon),
                       overwrite=True, progress=False, execution=Execution(device="cuda"))
    return {"resnet18_generate_s": round(generate_s, 1),
            "resnet18_generate_s_per_iteration": outcome.manifest["optimisation_time_s"] / outcome.manifest["iterations"],
            "resnet18_quantize_w4a4_pdquant_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parity-only", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: nothing to check on this machine")
        return
    record = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        record["parity"] = parity(Path(tmp))
        print(json.dumps(record["parity"], indent=1), flush=True)
        if not args.parity_only:
            record["speed"] = speed(Path(tmp))
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    sys.exit(0 if record["parity"]["passed"] else 1)


if __name__ == "__main__":
    main()
