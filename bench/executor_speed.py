"""Speed of the torch executor against the native nn.Module: forward + backward w.r.t. a batch of inputs.

Usage:
    python bench/executor_speed.py                          # ResNet-20, batch 256, 2 threads
    python bench/executor_speed.py --batch 64 --repeats 9 --out bench/results

Both sides run the same ResNet-20 (the real weights from $TOOLCHAIN_SHARED/weights/resnet20-12fca82f.th
when present, else random ones: speed does not depend on the values) with frozen weights, so backward
computes the input gradient only, as data generation does. After a warm-up, each repetition times both
engines back to back (alternating which goes first) so that drifts in machine load hit both; the ratio
reported is the median over repetitions of executor throughput / native throughput (target >= 0.85).
Writes <out>/executor_speed.json and <out>/executor_speed.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from toolchain.core.paths import shared_dir
from toolchain.executor import OnnxModule
from toolchain.export.exporter import export_to_onnx
from toolchain.export.zoo import read_state_dict
from toolchain_models.resnet_cifar import resnet20

WEIGHTS_FILE = "resnet20-12fca82f.th"
TARGET_RATIO = 0.85


def build_native() -> tuple[nn.Module, str]:
    model = resnet20().eval()
    path = shared_dir() / "weights" / WEIGHTS_FILE
    source = "random"
    if path.is_file():
        model.load_state_dict(read_state_dict(path))
        source = f"shared/weights/{WEIGHTS_FILE}"  # relative: results must not depend on where ../shared lives
    model.requires_grad_(False)  # frozen, as the executor's buffers are
    return model, source


def step(model: nn.Module, x: torch.Tensor) -> None:
    """One forward + backward w.r.t. the input (the data-generation inner loop)."""
    x.grad = None
    model(x).square().mean().backward()


def time_iterations(model: nn.Module, x: torch.Tensor, iterations: int) -> float:
    """Images per second over `iterations` forward+backward passes."""
    start = time.perf_counter()
    for _ in range(iterations):
        step(model, x)
    return iterations * x.shape[0] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per engine")
    parser.add_argument("--repeats", type=int, default=9, help="timed repetitions per engine, interleaved")
    parser.add_argument("--iterations", type=int, default=3, help="forward+backward passes per repetition")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    native, weights = build_native()
    model = export_to_onnx(native, torch.zeros(1, 3, 32, 32))
    executor = OnnxModule(model)
    # The executor can only be as fast as the graph is lean: list what it runs, to compare with the module.
    graph_ops = dict(sorted(Counter(op for op, _ in executor.runtime_nodes).items()))
    x = torch.randn(args.batch, 3, 32, 32, requires_grad=True)

    for engine in (native, executor):
        for _ in range(args.warmup):
            step(engine, x)
    native_ips, executor_ips = [], []
    for repeat in range(args.repeats):
        # Alternate which engine goes first: the second slot of a pair runs on a warmer (or more
        # throttled) machine, and a fixed order biased the ratio by a few percent in trials.
        if repeat % 2 == 0:
            native_ips.append(time_iterations(native, x, args.iterations))
            executor_ips.append(time_iterations(executor, x, args.iterations))
        else:
            executor_ips.append(time_iterations(executor, x, args.iterations))
            native_ips.append(time_iterations(native, x, args.iterations))
    ratios = [e / n for e, n in zip(executor_ips, native_ips)]

    result = {
        "benchmark": "executor_speed",
        "model": "resnet20 (CIFAR-10)",
        "weights": weights,
        "task": "forward + backward w.r.t. the input, weights frozen",
        "graph_ops": graph_ops,
        "batch": args.batch,
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "iterations_per_repeat": args.iterations,
        "native_images_per_s": native_ips,
        "executor_images_per_s": executor_ips,
        "native_median": statistics.median(native_ips),
        "executor_median": statistics.median(executor_ips),
        "ratio_per_repeat": ratios,
        "ratio_median": statistics.median(ratios),
        "target_ratio": TARGET_RATIO,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "executor_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "executor_speed.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


def _markdown(r: dict) -> str:
    verdict = "meets" if r["ratio_median"] >= r["target_ratio"] else "misses"
    return (
        "# Torch executor vs native module\n\n"
        f"{r['model']}, {r['task']}; batch {r['batch']}, {r['threads']} threads, torch {r['torch']}; "
        f"{r['repeats']} interleaved repetitions (alternating order) of {r['iterations_per_repeat']} iterations after "
        f"{r['warmup']} warm-up iterations. Weights: {r['weights']}.\n\n"
        f"Ops the executor runs: {', '.join(f'{op} x{n}' for op, n in r['graph_ops'].items())}.\n\n"
        "| engine | images/s (median) | min | max |\n|---|---:|---:|---:|\n"
        f"| native nn.Module | {r['native_median']:.1f} | {min(r['native_images_per_s']):.1f} | {max(r['native_images_per_s']):.1f} |\n"
        f"| OnnxModule | {r['executor_median']:.1f} | {min(r['executor_images_per_s']):.1f} | {max(r['executor_images_per_s']):.1f} |\n\n"
        f"Ratio executor / native (median of per-repetition ratios): **{r['ratio_median']:.3f}** "
        f"({verdict} the target {r['target_ratio']}).\n"
    )


if __name__ == "__main__":
    sys.exit(main())
