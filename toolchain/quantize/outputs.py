"""Stage 3 to files: a float model and its calibration set quantized, written as NAME.onnx and NAME.report.json.

Usage:
    check_quantize_inputs(proto, calibration.inputs, "resnet20.onnx")      # once per model and calibration set
    outcome = quantize_to_files(proto, calibration, Path("resnet20_w4a4.onnx"), QuantConfig(w_bits=4, a_bits=4),
                                source="resnet20.onnx")                    # QuantizeOutcome (None on ranks > 0)
    outcome.model, outcome.report, outcome.report_path
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from toolchain.core.atomic import atomic_output
from toolchain.data.calibration import CalibrationSet
from toolchain.onnxio.files import save_model
from toolchain.onnxio.validate import check_runs
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.driver import check_calibration, quantize
from toolchain.quantize.report_types import QuantReport


@dataclass(frozen=True)
class QuantizeOutcome:
    """What `quantize_to_files` wrote: the QDQ model, its report (also returned as a dict), and warnings.
    `model` is the QDQ graph as written, for a caller that goes on with it (no second read of the file)."""

    path: Path
    report_path: Path
    report: dict
    warnings: tuple[str, ...]
    model: onnx.ModelProto
    typed: QuantReport  # the report as typed values; `report` is its JSON form


def report_path_for(model_path: Path) -> Path:
    """DIR/NAME.onnx -> DIR/NAME.report.json."""
    return model_path.with_name(f"{model_path.stem}.report.json")


def check_quantize_inputs(proto: onnx.ModelProto, inputs: np.ndarray, source: str) -> None:
    """The calibration inputs fit the model (shape, dtype, finite) and the model runs on the first of them."""
    check_calibration(proto, inputs, source)
    check_runs(proto, source, sample=inputs[:1])


def quantize_to_files(proto: onnx.ModelProto, calibration: CalibrationSet, out: Path, config: QuantConfig,
                      source: str, progress: bool = True, resume: bool = False, execution=None,
                      distributed=None) -> QuantizeOutcome | None:
    """Quantize `proto` (consumed: it becomes the BN-folded float model) on inputs that passed
    check_quantize_inputs; write `out` and its report (both or neither). With reconstruction, `out.ckpt` keeps the
    finished units while it runs and is removed once `out` is written; `resume=True` continues from it."""
    checkpoint = out.with_name(out.name + ".ckpt") if config.reconstruction.enabled else None
    result = quantize(proto, calibration.inputs, config, source=source, calib_info=calibration.manifest,
                      progress=progress, checkpoint=checkpoint, resume=resume, consume=True, execution=execution,
                      distributed=distributed, inputs_checked=True)
    if result is None:  # a rank other than 0: rank 0 writes
        distributed.barrier()
        return None
    report_path = report_path_for(out)
    # The model is written (atomically, with external data when large) inside the report's block: an error in
    # either leaves neither file; only a kill between the two renames could leave the model without its report.
    with atomic_output(report_path) as report_tmp:
        report_tmp.write_text(json.dumps(result.report, indent=1, default=float) + "\n")
        save_model(result.model, out)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    if distributed is not None:
        distributed.barrier()  # the other ranks wait until the files are written
    return QuantizeOutcome(out, report_path, result.report, result.warnings, result.model, result.typed)
