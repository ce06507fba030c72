"""Stage 1 to a file: a zoo model (or package.module:factory) exported with BN kept, verified, written.

Usage:
    report = export_to_file("resnet20_cifar10", Path("resnet20.onnx"))   # ExportReport
    report.num_batchnorm, report.relative_diff                          # kept BN nodes, onnxruntime vs torch
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toolchain.onnxio.files import save_model
from toolchain.onnxio.graph import summarize
from toolchain.onnxio.preprocessing import PreprocessingOverrides, resolve_preprocessing


@dataclass(frozen=True)
class ExportReport:
    """What `export_to_file` did: where it wrote, how many BN nodes it kept, how it verified."""

    path: Path
    num_batchnorm: int
    num_nodes: int
    opset: int
    max_abs_diff: float
    relative_diff: float
    tolerance: float
    samples: int


def export_to_file(model: str, path: Path, weights: str | Path | None = None,
                   overrides: PreprocessingOverrides = PreprocessingOverrides(), opset: int = 17,
                   exporter: str = "torchscript") -> ExportReport:
    """Export `model` to `path` (replacing it) and verify the file against the torch module.

    `exporter`: "torchscript" (default) or "dynamo" (torch.onnx's dynamo exporter; needs onnxscript)."""
    # start-up time: torch, onnxruntime and the exporter load only when a model is exported, not with api
    import torch

    from toolchain.export.exporter import ExportConfig, export_to_onnx, verify_export
    from toolchain.export.zoo import load_zoo_model

    loaded = load_zoo_model(model, weights)
    pre = resolve_preprocessing(loaded.preprocessing, overrides, source=model)
    example = torch.zeros(1, pre.num_channels, *pre.input_size)
    config = ExportConfig(opset=opset, exporter=exporter)  # type: ignore[arg-type]  # the CLI's choice, checked there
    proto = export_to_onnx(loaded.module, example, pre, config, source=model)
    check = verify_export(loaded.module, proto, example, config)
    save_model(proto, path)
    summary = summarize(proto)
    return ExportReport(path, summary.num_batchnorm, sum(summary.ops.values()), summary.opset,
                        check.max_abs_diff, check.relative_diff, check.tolerance, check.samples)
