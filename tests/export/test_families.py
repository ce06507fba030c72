"""The family matrix: the block patterns of torchvision's families (models/families.py), exported as users
export them (torch.onnx's TorchScript exporter with BN kept, and its dynamo exporter), through every stage.

Per family and exporter: the executor matches onnxruntime on the raw export; clean-up leaves no shape
arithmetic where shapes are static; inspect lists every Conv/Linear; generation runs (DGH, BNS, FDDA on
the BN families; a clear error naming the alternatives on the others); W8A8 runs entirely on
onnxruntime's integer kernels wherever it has them (--require-full-integer), and the executor matches
onnxruntime layer by layer on the QDQ model; pdquant W4A4 `fast` reconstructs every block as one unit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from toolchain import api
from toolchain.cli.text import format_summary
from toolchain.errors import GraphError
from toolchain.executor import OnnxModule
from toolchain.onnxio.graph import summarize, tensor_types
from toolchain.onnxio.passes import cleanup_passes, run_passes
from toolchain.onnxio.preprocessing import PreprocessingOverrides
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.driver import quantize
from toolchain.quantize.reconstruct import ReconConfig
from toolchain_models.families import FAMILIES, export_as_users_do, family_model

from agreement import layerwise_agreement

EXPORTERS = ("torchscript", "dynamo")
TOLERANCE = 1e-5  # max|diff| / max|reference|, as for every executor parity check
# onnxruntime's CPU provider has no integer LayerNormalization, Erf or Gelu: these stay float between DQ and Q.
NO_ORT_INTEGER_KERNEL = {"convnext": {"LayerNormalization", "Div", "Erf", "Gelu"}, "vit": {"LayerNormalization", "Div", "Erf", "Gelu"}}
# The class token is expanded to the batch: a really dynamic shape, left to run in integers.
DYNAMIC_SHAPE_OPS = {"vit": {"Shape", "Gather", "Squeeze", "Unsqueeze", "Reshape", "Concat", "Equal", "Where"}}
PRE = PreprocessingOverrides(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
W8A8_MIN_SQNR_DB = {"vit": 12.0}  # random-weight attention is the noisiest; every other family reaches 30 dB or more


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Callable[[str, str], Path]:
    """(family, exporter) -> the ONNX file, exported once per module."""
    folder = tmp_path_factory.mktemp("families")
    cache: dict[tuple[str, str], Path] = {}

    def get(name: str, exporter: str) -> Path:
        if (name, exporter) not in cache:
            cache[name, exporter] = export_as_users_do(family_model(name), folder / f"{name}_{exporter}.onnx", exporter)
        return cache[name, exporter]

    return get


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


MATRIX = [(name, exporter) for name in sorted(FAMILIES) for exporter in EXPORTERS]
BN_FAMILIES = sorted(name for name, family in FAMILIES.items() if family.has_batchnorm)


@pytest.mark.parametrize("name, exporter", MATRIX)
def test_executor_and_cleanup_match_onnxruntime(exported, name, exporter):
    """The executor runs the raw export within 1e-5 of onnxruntime; clean-up keeps the function (1e-5) and leaves
    BN parameters as initializers and no integer shape arithmetic, except where a shape is really dynamic."""
    model = onnx.load(exported(name, exporter))
    x = _inputs(3, seed=1)
    want = _ort(model, x)
    with torch.no_grad():
        assert _relative(OnnxModule(model)(torch.from_numpy(x)).numpy(), want) <= TOLERANCE
    run_passes(model, cleanup_passes())
    assert _relative(_ort(model, x), want) <= TOLERANCE
    initializers = {i.name for i in model.graph.initializer}
    for bn in (n for n in model.graph.node if n.op_type == "BatchNormalization"):
        assert all(name in initializers for name in bn.input[1:5]), bn.name
    types = tensor_types(model)
    integer = {n.op_type for n in model.graph.node if any(types.get(o) in (onnx.TensorProto.INT64, onnx.TensorProto.BOOL) for o in n.output)}
    assert integer <= DYNAMIC_SHAPE_OPS.get(name, set()), f"shape arithmetic left: {sorted(integer)}"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_inspect_lists_every_conv_and_linear(exported, name):
    """inspect on an export without constant folding lists one quantizable layer per nn.Conv2d / nn.Linear,
    MatMul weights that the file computes with a Transpose included (ConvNeXt, ViT)."""
    layers = summarize(onnx.load(exported(name, "torchscript"))).quantizable
    module = family_model(name)
    assert len(layers) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())


@pytest.mark.parametrize("name", ["convnext", "vit"])
def test_inspect_says_layernorm_models_have_no_statistics(exported, name):
    """inspect on a LayerNorm model names LayerNormalization as the reason there is nothing to match, not a BN
    folded at export, and points to gaussian data."""
    text = format_summary(summarize(onnx.load(exported(name, "torchscript"))), name)
    assert "LayerNormalization, which keeps no running statistics" in text and "gaussian" in text
    assert "folded" not in text


@pytest.mark.parametrize("name", BN_FAMILIES)
@pytest.mark.parametrize("method", ["dgh", "bns", "fdda"])
def test_generation_runs_on_every_bn_family(exported, name, method, tmp_path):
    """DGH, BNS and FDDA (fast preset) produce finite images of the model's input shape on every BN family."""
    data = None
    if method == "fdda":  # a few labelled "real" images: FDDA only needs their labels and statistics here
        data = tmp_path / "few.npz"
        rng = np.random.default_rng(0)
        np.savez(data, images=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), labels=np.arange(20) % 10)
    out = api.generate_calibration(exported(name, "torchscript"), method, 16, out=tmp_path / "calib.npz", preset_name="fast",
                                   data=data, per_class=2 if data else None, overrides=PRE, progress=False)
    with np.load(out.path) as calib:
        assert calib["inputs"].shape == (16, 3, 32, 32) and np.isfinite(calib["inputs"]).all()


@pytest.mark.parametrize("name", BN_FAMILIES)
def test_dgh_runs_on_dynamo_exports(exported, name, tmp_path):
    """The dynamo exporter's BN graphs (zero biases from Shape -> Expand, CastLike, SplitToSequence) generate too."""
    out = api.generate_calibration(exported(name, "dynamo"), "dgh", 16, out=tmp_path / "calib.npz", preset_name="fast",
                                   overrides=PRE, progress=False)
    assert out.path.exists()


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - set(BN_FAMILIES)))
def test_generation_without_bn_names_the_alternatives(exported, name, tmp_path):
    """A model without BN statistics (SqueezeNet; LayerNorm-only ConvNeXt and ViT) gets one clear error naming
    gaussian and real data, and nothing is written."""
    with pytest.raises(GraphError, match=r"gaussian.*real"):
        api.generate_calibration(exported(name, "torchscript"), "dgh", 16, out=tmp_path / "calib.npz", preset_name="fast",
                                 overrides=PRE, progress=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name, exporter", MATRIX)
def test_w8a8_runs_on_integer_kernels_and_engines_agree(exported, name, exporter):
    """W8A8 (16 Gaussian calibration inputs): fully integer in onnxruntime (--require-full-integer) wherever it has
    the kernels, otherwise exactly the ops without one are listed as float and the coverage is below 1; the
    output SQNR is at least 20 dB (12 for ViT); the executor matches onnxruntime layer by layer (>= 99.9 %)."""
    model = onnx.load(exported(name, exporter))
    full = name not in NO_ORT_INTEGER_KERNEL
    result = quantize(model, _inputs(16, seed=0), QuantConfig(reduce_range=True, require_full_integer=full), progress=False)
    fusion = result.report["fusion"]
    if full:
        assert fusion["fully_integer"] and fusion["coverage"] == 1.0 and fusion["mac_coverage"] == 1.0
    else:
        float_types = {op["op_type"] for op in fusion["float_ops"]}
        assert float_types and float_types <= NO_ORT_INTEGER_KERNEL[name] and fusion["coverage"] < 1.0
    assert result.report["summary"]["output_sqnr_db"] >= W8A8_MIN_SQNR_DB.get(name, 20.0)
    assert result.report["unquantized"] == []
    assert layerwise_agreement(result.model, _inputs(4, seed=2)) >= 0.999


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_pdquant_w4a4_fast_reconstructs_blocks_as_units(exported, name):
    """pdquant W4A4 at the fast preset runs on every family; inception, SE, shuffle, dense and transformer blocks
    are delimited from the graph (no layer-wise fallback), and the model's output is finite."""
    recon = ReconConfig.preset("pdquant", "fast")
    result = quantize(onnx.load(exported(name, "torchscript")), _inputs(32, seed=0),
                      QuantConfig(w_bits=4, a_bits=4, reconstruction=recon), progress=False)
    units = result.report["reconstruction"]["units"]
    assert units and result.report["reconstruction"]["notes"] == []
    assert all(unit["kind"] != "layer-fallback" for unit in units)
    assert np.isfinite(_ort(result.model, _inputs(2, seed=3))).all()
