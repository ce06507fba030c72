"""The fastest generation and reconstruction can be on this machine: a roofline over each convolution's passes.

Usage:
    python bench/roofline.py                        # the 3 ImageNet models of bench/torch_speed.py
    python bench/roofline.py --models efficientnet_lite0 --work /tmp/torch_speed

bench/torch_speed.py's floor counts only arithmetic (4 x forward MACs at the dense float32 rate), which a
depthwise convolution cannot approach: it does 9 multiply-adds per element it reads and writes. Here each
Conv / Gemm / MatMul of one image's generation step (the forward and the gradient with respect to its input)
costs the larger of its arithmetic at the dense rate and its tensor traffic at the measured memory bandwidth:
forward reads the input and the weights and writes the output; the input gradient reads the output's
gradient and the weights and writes the input's (the weights once per batch of 32, as generation runs).
Everything else (activations, BN-statistics hooks, the optimiser) is left out, as if fused away, so this
too is a lower bound; it is tighter where layers are memory-bound. Bandwidth: a 256 MiB tensor copy with
torch's threads (bytes read + written per second).
Results: bench/results/roofline.{json,md}; measure on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper, shape_inference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_speed import MODELS, RESULTS, dense_gflops, prepare


def memory_gbps() -> float:
    """Bytes read plus bytes written per second by a 256 MiB float32 copy (torch's threads), in GB/s."""
    a = torch.randn(64 << 20)
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - start)
    return 2 * a.numel() * 4 / statistics.median(times) / 1e9


def conv_layers(path: Path) -> list[dict]:
    """Per Conv / Gemm / MatMul of a single-image forward: MACs and the input, output and weight element counts."""
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    weights = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    layers = []
    for node in inferred.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[1] not in weights:
            continue
        out, x, w = shapes.get(node.output[0]), shapes.get(node.input[0]), weights[node.input[1]]
        if not out or not x:
            continue
        if node.op_type == "Conv":
            macs = float(np.prod(out)) * float(np.prod(w[1:]))
            kind = "depthwise" if w[1] == 1 and out[1] > 1 else ("pointwise" if w[2:] == (1, 1) else "dense")
        else:
            macs = float(np.prod(out)) * float(w[0 if node.op_type == "MatMul" else -1])
            kind = "matrix"
        layers.append({"name": node.name, "weight": node.input[1], "kind": kind, "macs": macs, "in": float(np.prod(x)),
                       "out": float(np.prod(out)), "weights": float(np.prod(w))})
    return layers


BATCH = 32  # generation's batch (preset cpu): the weights are read once per batch, the activations per image


def roofline(layers: list[dict], gflops: float, gbps: float) -> dict:
    """Seconds per image-iteration (forward + input gradient) at the roofline, in total and by layer kind."""
    by_kind: dict[str, float] = {}
    compute_only = 0.0
    for layer in layers:
        flop = 2 * 2 * layer["macs"]
        traffic = 4 * 2 * (layer["in"] + layer["out"] + layer["weights"] / BATCH)
        seconds = max(flop / (gflops * 1e9), traffic / (gbps * 1e9))
        by_kind[layer["kind"]] = by_kind.get(layer["kind"], 0.0) + seconds
        compute_only += flop / (gflops * 1e9)
    return {"roofline_s": sum(by_kind.values()), "compute_only_s": compute_only,
            "by_kind_s": {k: round(v, 5) for k, v in by_kind.items()}}


def _pass_s(layer: dict, images: float, batches: float, gflops: float, gbps: float) -> float:
    """One forward, input-gradient or weight-gradient pass of `layer` over `images` images in `batches` batches."""
    flop = 2 * layer["macs"] * images
    traffic = 4 * ((layer["in"] + layer["out"]) * images + layer["weights"] * batches)
    return max(flop / (gflops * 1e9), traffic / (gbps * 1e9))


def recon_roofline_s(layers: list[dict], record: dict, gflops: float, gbps: float) -> float | None:
    """The roofline seconds of the units a bench/torch_speed.py reconstruction record measured.

    Per unit (its layers by weight name), with the record's work: distribution correction, steps x samples
    through the unit (forward + input gradient, one batch per step); the training loop, iterations x batch x
    halves through the unit (forward, weight gradient, and input gradient unless the unit reads the image)
    and, with the PD term, iterations x batch through the FP tail (forward + input gradient); the measures,
    2 x 64 samples forward through unit and tail; the passes, 3 x samples forward through the unit.
    """
    if "unit_detail" not in record:
        return None
    index = {layer["weight"]: i for i, layer in enumerate(layers)}
    work = record["work"]
    n, iterations, batch = work["samples"], work["iterations"], work["batch_size"]
    total = 0.0
    for unit in record["unit_detail"]:
        mine = [index[w] for w in unit["weights"] if w in index]
        if not mine:
            return None
        unit_layers = [layers[i] for i in mine]
        tail = layers[max(mine) + 1:] if unit["pd_term"] else []
        halves = 2 if unit["pd_term"] else 1
        grads = 2 if unit.get("reads_image") else 3
        for layer in unit_layers:
            if unit["distribution_correction"]:
                total += 2 * _pass_s(layer, work["dc_steps"] * n, work["dc_steps"], gflops, gbps)
            total += grads * _pass_s(layer, iterations * halves * batch, iterations, gflops, gbps)
            total += _pass_s(layer, 2 * min(64, n) + 3 * n, 5, gflops, gbps)
        for layer in tail:
            total += 2 * _pass_s(layer, iterations * batch, iterations, gflops, gbps)
            total += _pass_s(layer, 2 * min(64, n), 2, gflops, gbps)
    return total


def render(results: dict) -> str:
    speed = json.loads((RESULTS / "torch_speed.json").read_text()) if (RESULTS / "torch_speed.json").exists() else {}
    lines = ["# Generation at 224x224: a roofline floor per image-iteration", "",
             f"Machine: {results['machine']}; dense float32 {results['dense_float32_gflops']} GFLOP/s, memory "
             f"{results['memory_gbps']} GB/s (copy). Each convolution costs max(arithmetic / dense rate, traffic / "
             "bandwidth) for its forward and input gradient; other ops are left out (a lower bound). Measured "
             "seconds from bench/results/torch_speed.md (generation, old and new code).", "",
             "| model | compute-only floor s | roofline s | depthwise share of roofline | measured old s | measured new s "
             "| new of roofline | most a float32 code could still gain |",
             "|---|---|---|---|---|---|---|---|"]
    for model, entry in results["models"].items():
        row = speed.get("models", {}).get(model, {}).get("generate", {})
        old = statistics.median(r["image_iteration_s"] for r in row["old"]) if row.get("old") else None
        new = statistics.median(r["image_iteration_s"] for r in row["new"]) if row.get("new") else None
        depthwise = entry["by_kind_s"].get("depthwise", 0.0) / entry["roofline_s"]
        cells = [f"{entry['compute_only_s']:.4f}", f"{entry['roofline_s']:.4f}", f"{100 * depthwise:.0f} %",
                 f"{old:.4f}" if old else "–", f"{new:.4f}" if new else "–",
                 f"{100 * entry['roofline_s'] / new:.0f} %" if new else "–",
                 f"{new / entry['roofline_s']:.1f}x" if new else "–"]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    recon_rows = []
    for model, entry in results["models"].items():
        row = speed.get("models", {}).get(model, {}).get("reconstruct", {})
        if not row.get("old") or not row.get("new") or "layers" not in entry:
            continue
        floor = recon_roofline_s(entry["layers"], row["new"][0], results["dense_float32_gflops"], results["memory_gbps"])
        if floor is None:
            continue
        old = statistics.median(sum(r["unit_seconds"]) for r in row["old"])
        new = statistics.median(sum(r["unit_seconds"]) for r in row["new"])
        recon_rows.append(f"| {model} | {floor:.1f} | {old:.1f} | {new:.1f} | {100 * floor / old:.0f} % → "
                          f"{100 * floor / new:.0f} % | {new / floor:.1f}x | `{row.get('new_code', '?')}` |")
    if recon_rows:
        lines += ["", "## Reconstruction's first 3 units (pdquant, preset cpu, W4A8): roofline against measured", "",
                  "The same per-layer roofline over the units' convolution passes: distribution correction, the "
                  "training loop with the FP tail of the PD term, the measures and passes (recon_roofline_s).", "",
                  "| model | roofline s | measured old s | measured new s | old → new of roofline | new above "
                  "roofline | new code |", "|---|---|---|---|---|---|---|", *recon_rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "torch_speed"))
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    path = RESULTS / "roofline.json"
    if args.render_only:
        (RESULTS / "roofline.md").write_text(render(json.loads(path.read_text())))
        return
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    gflops, gbps = dense_gflops(), memory_gbps()
    results = {"machine": f"{os.cpu_count()} cores, torch {torch.__version__}", "dense_float32_gflops": round(gflops, 1),
               "memory_gbps": round(gbps, 1), "models": {}}
    for model in args.models:
        onnx_path, _ = prepare(model, Path(args.work))
        layers = conv_layers(onnx_path)
        results["models"][model] = {**roofline(layers, gflops, gbps), "layers": layers}
    path.write_text(json.dumps(results, indent=1))
    (RESULTS / "roofline.md").write_text(render(results))
    print((RESULTS / "roofline.md").read_text())


if __name__ == "__main__":
    main()
