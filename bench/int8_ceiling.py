"""What 8-bit integer kernels can gain over FP32 on this CPU: stacks of 3x3 convolutions, quantized by us.

Usage:
    python bench/int8_ceiling.py                 # ort and openvino; writes bench/results/int8_ceiling.json / .md
    python bench/int8_ceiling.py --runtimes ort --runs 100
    python bench/int8_ceiling.py --models resnet18 mobilenetv2 --no-stacks    # whole ImageNet-size models only

Each model is a stem Conv 3x3 3->C + Relu, then 6 x (Conv 3x3 C->C + Relu) at one feature-map size,
nothing else, so the time is the convolution kernels' (Q/DQ at the model's input and output is amortised
over 7 layers; the quantizer takes image inputs, hence the 3-channel stem). It is quantized
W8A8 by the toolchain itself (with `--reduce-range` on a CPU without VNNI, whose kernels saturate
otherwise), the same layout the ResNet-20 rows of bench/targets.py use, and timed against its FP32 original in the same runtime, 2 threads, in
alternating rounds (bench/timing.py). The sizes are ResNet-20's three stages (16x32x32, 32x16x16,
64x8x8) and two ImageNet-size stages (64x56x56, 256x14x14): the ratio at ResNet-20's sizes bounds what
the whole ResNet-20 can reach, the large ones show the kernels where per-call overhead no longer counts.
`--models` adds whole ImageNet-size models at batch 1 (random weights with data BN statistics, as in
bench/scale.py; W8A8 from 32 Gaussian calibration inputs: this measures speed, not accuracy).
Time it with the machine alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from timing import interleaved_ms

from toolchain.core.cpu import has_vnni
from toolchain.onnxio.files import save_model
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.driver import quantize

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LAYERS = 6
# (channels, height = width, batch sizes)
SHAPES = [(16, 32, (1, 32)), (32, 16, (1, 32)), (64, 8, (1, 32)), (64, 56, (1,)), (256, 14, (1,))]


def conv_stack(channels: int, size: int) -> onnx.ModelProto:
    """Conv 3x3 3->C, then 6 x Conv 3x3 C->C (pad 1, bias, each + Relu) on a 3 x size x size input, dynamic batch."""
    rng = np.random.default_rng(channels * 1000 + size)
    nodes, initializers, current = [], [], "x"
    for i in range(LAYERS + 1):
        fan_in = 3 if i == 0 else channels
        # He-initialised weights keep the activations' scale layer after layer
        weight = (rng.standard_normal((channels, fan_in, 3, 3)) * np.sqrt(2.0 / (9 * fan_in))).astype(np.float32)
        bias = (0.01 * rng.standard_normal(channels)).astype(np.float32)
        initializers += [numpy_helper.from_array(weight, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes += [helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        current = f"r{i}"
    graph = helper.make_graph(nodes, f"conv_stack_{channels}x{size}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["N", channels, size, size])],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


MODELS = {"resnet18": "toolchain_models.statistics:resnet18_data_bn",
          "mobilenetv2": "toolchain_models.statistics:mobilenetv2_data_bn"}


def _timed_row(runtime: str, paths: tuple[Path, Path], shape: list[int], runs: int, macs: int | None, **fields) -> dict:
    quantized, fp32 = interleaved_ms(runtime, paths, shape, runs)
    row = {"runtime": runtime, **fields, "batch": shape[0], "int8_ms": round(quantized, 4), "fp32_ms": round(fp32, 4),
           "ratio": round(quantized / fp32, 3)}
    if macs is not None:
        row.update(fp32_gmacs_per_s=round(macs / fp32 / 1e6, 1), int8_gmacs_per_s=round(macs / quantized / 1e6, 1))
    print(json.dumps(row), flush=True)
    return row


def measure_models(names: list[str], runtimes: list[str], runs: int, folder: Path) -> list[dict]:
    from toolchain import api
    from toolchain.onnxio.preprocessing import PreprocessingOverrides

    imagenet = PreprocessingOverrides(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=(224, 224))
    rows = []
    for name in names:
        fp32_path, qdq_path = folder / f"{name}.onnx", folder / f"{name}_w8a8.onnx"
        api.export_model(MODELS[name], fp32_path, overrides=imagenet, overwrite=True)
        calib = folder / "gauss224.npz"
        np.savez(calib, inputs=np.random.default_rng(0).standard_normal((32, 3, 224, 224), dtype=np.float32))
        api.quantize_model(fp32_path, calib, qdq_path, QuantConfig(w_bits=8, a_bits=8, reduce_range=has_vnni() is False),
                           overwrite=True, progress=False)
        rows += [_timed_row(runtime, (qdq_path, fp32_path), [1, 3, 224, 224], max(runs // 10, 30), None, model=name)
                 for runtime in runtimes]
    return rows


def measure(runtimes: list[str], runs: int, folder: Path) -> list[dict]:
    rows = []
    for channels, size, batches in SHAPES:
        model = conv_stack(channels, size)
        calib = np.random.default_rng(1).standard_normal((32, 3, size, size)).astype(np.float32)
        qdq = quantize(model, calib, QuantConfig(w_bits=8, a_bits=8, reduce_range=has_vnni() is False), progress=False).model
        fp32_path, qdq_path = folder / f"fp32_{channels}x{size}.onnx", folder / f"qdq_{channels}x{size}.onnx"
        save_model(model, fp32_path)
        save_model(qdq, qdq_path)
        for runtime in runtimes:
            for batch in batches:
                count = runs if batch == 1 and size <= 32 else max(runs // 5, 40)
                macs = batch * (LAYERS * channels + 3) * channels * 9 * size * size
                rows.append(_timed_row(runtime, (qdq_path, fp32_path), [batch, 3, size, size], count, macs,
                                       channels=channels, size=size))
    return rows


def render(rows: list[dict], vnni: bool | None) -> str:
    weights = "full-range weights (this CPU has VNNI)" if vnni else "--reduce-range weights (this CPU has no VNNI)"
    lines = ["# 8-bit kernels against FP32 on this CPU: Conv 3x3 3->C + 6 x Conv 3x3 C->C, each + Relu, W8A8, 2 threads", "",
             f"Machine: {platform.processor() or platform.machine()}, {weights}. Median ms per call, both files timed "
             "in alternating rounds (bench/timing.py).", "",
             "| runtime | C x H x W | batch | int8 ms | FP32 ms | int8 / FP32 | FP32 GMAC/s | int8 GMAC/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['runtime']} | {r['channels']}x{r['size']}x{r['size']} | {r['batch']} | {r['int8_ms']:.3f} | "
              f"{r['fp32_ms']:.3f} | {r['ratio']:.2f} | {r['fp32_gmacs_per_s']} | {r['int8_gmacs_per_s']} |"
              for r in rows if "channels" in r]
    models = [r for r in rows if "model" in r]
    if models:
        lines += ["", "Whole models @224, batch 1 (random weights with data BN statistics):", "",
                  "| runtime | model | int8 ms | FP32 ms | int8 / FP32 |", "|---|---|---:|---:|---:|"]
        lines += [f"| {r['runtime']} | {r['model']} | {r['int8_ms']:.2f} | {r['fp32_ms']:.2f} | {r['ratio']:.2f} |" for r in models]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtimes", nargs="+", default=["ort", "openvino"], choices=["ort", "openvino"])
    parser.add_argument("--runs", type=int, default=300, help="calls per file at batch 1 on ResNet-20's sizes")
    parser.add_argument("--models", nargs="*", default=[], choices=sorted(MODELS), help="whole models @224 too")
    parser.add_argument("--no-stacks", action="store_true", help="only the --models rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = [] if args.no_stacks else measure(args.runtimes, args.runs, Path(folder))
        rows += measure_models(args.models, args.runtimes, args.runs, Path(folder))
    RESULTS.mkdir(parents=True, exist_ok=True)
    vnni = has_vnni()
    (RESULTS / "int8_ceiling.json").write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                                           "vnni": vnni, "rows": rows}, indent=1) + "\n")
    text = render(rows, vnni)
    (RESULTS / "int8_ceiling.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
