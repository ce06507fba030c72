"""TensorRT check of a `--target tensorrt` QDQ model: build an engine, count INT8 layers, top-1 and latency.

Usage (on a machine with an NVIDIA GPU and `pip install tensorrt`):
    toolchain quantize resnet20.onnx --calib calib_data/dgh256.npz --target tensorrt -o r20_trt.onnx
    python bench/tensorrt_check.py r20_trt.onnx --fp32 resnet20.onnx --data ../shared/datasets/cifar10-test-jpg.tar.gz

TensorRT's explicit quantization reads the Q/DQ pairs; the engine inspector (detailed profiling) then
names each fused layer's precision. Printed and written to bench/results/tensorrt_check.json: INT8 layer
count, top-1 of the engine and of onnxruntime CPU on the same images, latency at batch 1 (median of 300
runs) of the QDQ engine and of an FP16 engine of the FP32 model. Without a GPU or the package it says
so and exits 0 (nothing to check); it has not run on this project's CPU machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def build(trt, path: Path, int8: bool, max_batch: int):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(path.read_bytes()):
        raise SystemExit(f"{path}: TensorRT's ONNX parser failed: {parser.get_error(0)}")
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    config.set_flag(trt.BuilderFlag.INT8 if int8 else trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    tensor = network.get_input(0)
    shape = list(tensor.shape)[1:]
    profile.set_shape(tensor.name, [1, *shape], [1, *shape], [max_batch, *shape])
    config.add_optimization_profile(profile)
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    return engine, tensor.name, shape


def run_engine(torch, engine, name: str, x: np.ndarray) -> np.ndarray:
    context = engine.create_execution_context()
    context.set_input_shape(name, x.shape)
    inputs = torch.from_numpy(x).cuda()
    output_name = engine.get_tensor_name(1)
    out = torch.empty(tuple(context.get_tensor_shape(output_name)), device="cuda")
    context.set_tensor_address(name, inputs.data_ptr())
    context.set_tensor_address(output_name, out.data_ptr())
    context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    return out.cpu().numpy()


def latency_ms(torch, engine, name: str, shape: list[int], runs: int = 300) -> float:
    x = np.zeros([1, *shape], np.float32)
    for _ in range(30):
        run_engine(torch, engine, name, x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_engine(torch, engine, name, x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def int8_layers(trt, engine) -> tuple[int, int]:
    info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    layers = info.get("Layers", [])
    int8 = sum(1 for layer in layers if "Int8" in json.dumps(layer.get("Inputs", [])) or "INT8" in json.dumps(layer))
    return int8, len(layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    try:
        import tensorrt as trt
        import torch
    except ImportError as err:
        print(f"nothing to check: {err.name} is not installed (pip install tensorrt)")
        return
    if not torch.cuda.is_available():
        print("nothing to check: no CUDA GPU")
        return
    from toolchain import api
    from toolchain.data.images import open_images
    from toolchain.onnxio.files import load_model
    from toolchain.onnxio.preprocessing import read_preprocessing

    pre = read_preprocessing(load_model(args.model))
    data = open_images(args.data, pre, limit=args.limit, seed=0)
    engine, name, shape = build(trt, args.model, int8=True, max_batch=256)
    fp16, fp16_name, _ = build(trt, args.fp32, int8=False, max_batch=1)
    correct = 0
    for inputs, labels in data.batches(256):
        correct += int((run_engine(torch, engine, name, inputs).argmax(1) == labels).sum())
    ort_top1 = api.evaluate_model(args.model, args.data, limit=args.limit, progress=False).top1
    int8, total = int8_layers(trt, engine)
    result = {"model": str(args.model), "tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(),
              "int8_layers": int8, "layers": total, "top1_tensorrt": correct / len(data), "top1_ort_cpu": ort_top1,
              "images": len(data), "latency_ms": latency_ms(torch, engine, name, shape),
              "latency_fp16_ms": latency_ms(torch, fp16, fp16_name, shape)}
    print(json.dumps(result, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tensorrt_check.json").write_text(json.dumps(result, indent=1))
    sys.exit(0 if abs(result["top1_tensorrt"] - ort_top1) <= 0.002 else 1)


if __name__ == "__main__":
    main()
