"""PyTorch -> ONNX with BatchNormalization nodes kept, shape arithmetic folded, preprocessing stamped.

Usage:
    from toolchain.export.exporter import ExportConfig, export_to_onnx, verify_export
    proto = export_to_onnx(module, example_input, preprocessing)   # onnx.ModelProto, BN kept
    check = verify_export(module, proto)                            # onnx.checker + ORT vs PyTorch

Why this is not a plain `torch.onnx.export`: in eval mode both torch exporters fold every
BatchNormalization into the preceding Conv (pytorch/pytorch#49226), and the BN running statistics are
what zero-shot data generation needs. The TorchScript exporter with TrainingMode.PRESERVE skips that
eval-mode peephole while still exporting BN in inference form (training_mode=0). The dynamo exporter
(`ExportConfig(exporter="dynamo")`, needs onnxscript) keeps BN when its graph optimiser is off; its shape
arithmetic (Shape/CastLike/Expand chains) is folded by the same clean-up passes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from torch import nn

import toolchain
from toolchain.errors import ExportError
from toolchain.onnxio.files import check_model, load_model
from toolchain.onnxio.passes import cleanup_passes, run_passes
from toolchain.onnxio.preprocessing import Preprocessing, write_preprocessing
from toolchain.onnxio.sessions import inference_session

logger = logging.getLogger(__name__)

Exporter = Literal["torchscript", "dynamo"]
EXPORTERS: tuple[Exporter, ...] = ("torchscript", "dynamo")


@dataclass(frozen=True)
class ExportConfig:
    """Options of the exporter.

    Attributes:
        opset: ONNX opset of the exported graph (>= 17; the quantizer raises it where low-bit types need it).
        input_name / output_name: names of the graph's single input and output.
        verify_samples: random inputs used to compare onnxruntime with PyTorch.
        verify_tolerance: allowed max|ort - torch| / max|torch| (float32 kernels differ in summation order).
        exporter: "torchscript" (torch.onnx.export dynamo=False, TrainingMode.PRESERVE) or "dynamo"
            (dynamo=True, optimize=False: the optimiser would fold BN into the Conv; needs onnxscript).
    """

    opset: int = 17
    input_name: str = "input"
    output_name: str = "logits"
    verify_samples: int = 8
    verify_tolerance: float = 1e-5
    exporter: Exporter = "torchscript"


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of comparing the exported graph in onnxruntime with the PyTorch module."""

    max_abs_diff: float
    relative_diff: float
    tolerance: float
    samples: int

    @property
    def ok(self) -> bool:
        return self.relative_diff <= self.tolerance


def count_batchnorm_modules(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def export_to_onnx(
    module: nn.Module,
    example_input: torch.Tensor,
    preprocessing: Preprocessing | None = None,
    config: ExportConfig = ExportConfig(),
    source: str = "",
) -> onnx.ModelProto:
    """Export `module` (put in eval mode) to an ONNX graph that keeps its BatchNormalization nodes."""
    if config.opset < 17:
        raise ExportError(f"opset {config.opset} is too old: the toolchain exports at opset >= 17")
    if config.exporter not in EXPORTERS:
        raise ExportError(f"exporter {config.exporter!r} is not one of {', '.join(EXPORTERS)}")
    if config.exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise ExportError("the dynamo exporter needs onnxscript: pip install onnxscript "
                          "(or export with the default TorchScript exporter)")
    module = module.eval()
    # Exported to a file in a temporary folder, not to memory: beyond 2 GiB torch writes the weights as
    # external data beside it, and load_model reads them back (a BytesIO cannot hold such a model).
    folder = tempfile.TemporaryDirectory(prefix="toolchain-export-")
    exported = Path(folder.name) / "exported.onnx"
    try:
        _torch_export(module, example_input, exported, config)
        model = load_model(exported)
    except Exception as err:  # the exporter raises many types; the message is what the user needs
        raise ExportError(f"torch.onnx.export failed for {source or type(module).__name__}: {err}") from err
    finally:
        folder.cleanup()
    run_passes(model, cleanup_passes())
    _name_unnamed_nodes(model)
    model.producer_name = "toolchain"
    model.producer_version = toolchain.__version__
    prop = model.metadata_props.add()
    prop.key, prop.value = "toolchain.source", source or type(module).__name__
    if preprocessing is not None:
        write_preprocessing(model, preprocessing)
    expected_bn = count_batchnorm_modules(module)
    kept_bn = sum(node.op_type == "BatchNormalization" for node in model.graph.node)
    if kept_bn != expected_bn:
        raise ExportError(
            f"the exported graph has {kept_bn} BatchNormalization nodes but the module has {expected_bn} BatchNorm layers; "
            "BN was folded or fused at export — report this with the model definition"
        )
    return model


DYNAMO_MIN_OPSET = 18  # torch.onnx's dynamo exporter has no lower implementations (it would down-convert)


def exported_opset(config: ExportConfig) -> int:
    """The opset the file gets: the requested one, at least 18 with the dynamo exporter."""
    return max(config.opset, DYNAMO_MIN_OPSET) if config.exporter == "dynamo" else config.opset


@contextlib.contextmanager
def _quiet_exporter():
    """Both exporters warn (deprecations, tracer, missing torchvision ops) and dynamo prints its progress:
    nothing the user can act on. Errors still surface as exceptions."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export", "torch._export")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _torch_export(module: nn.Module, example_input: torch.Tensor, path: Path, config: ExportConfig) -> None:
    names: dict[str, Any] = {"input_names": [config.input_name], "output_names": [config.output_name],
             "opset_version": exported_opset(config)}
    with _quiet_exporter():
        if config.exporter == "dynamo":
            torch.onnx.export(module, (example_input,), str(path), dynamo=True, optimize=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
        else:
            torch.onnx.export(
                module,
                (example_input,),
                str(path),
                dynamo=False,
                training=torch.onnx.TrainingMode.PRESERVE,  # skips the eval-mode Conv+BN fusion
                do_constant_folding=True,
                dynamic_axes={config.input_name: {0: "batch"}, config.output_name: {0: "batch"}},
                **names,
            )


def _name_unnamed_nodes(model: onnx.ModelProto) -> None:
    """Every node gets a stable, unique name: later passes write parameters back by node name."""
    used = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def verify_export(module: nn.Module, model: onnx.ModelProto, example_input: torch.Tensor,
                  config: ExportConfig = ExportConfig(), seed: int = 0) -> VerifyResult:
    """onnx.checker, then onnxruntime vs PyTorch on random inputs shaped like `example_input`."""

    try:
        check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"the exported graph fails onnx.checker: {err}") from err
    generator = torch.Generator().manual_seed(seed)
    shape = (config.verify_samples, *example_input.shape[1:])
    x = torch.randn(shape, generator=generator, dtype=example_input.dtype)
    with torch.no_grad():
        reference = module.eval()(x).numpy()
    session = inference_session(model)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    max_abs = float(np.abs(got - reference).max())
    relative = max_abs / max(float(np.abs(reference).max()), 1e-12)
    result = VerifyResult(max_abs, relative, config.verify_tolerance, config.verify_samples)
    if not result.ok:
        raise ExportError(
            f"onnxruntime and PyTorch disagree on the exported graph: max|diff|/max|ref| = {relative:.2e} "
            f"> {config.verify_tolerance:.0e}; the model may use an op the exporter mistranslates"
        )
    return result
