"""BN parameters that torch.onnx shares through Identity nodes are read on every path: inspect, generate
(every method), quantize (calibrator only and with reconstruction)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from toolchain import api
from toolchain.data.calibration import load_calibration
from toolchain.onnxio.graph import bn_statistics
from toolchain.onnxio.preprocessing import PreprocessingOverrides


def _net() -> nn.Module:
    torch.manual_seed(0)
    # Fresh BN layers hold equal tensors (weight 1 = var 1, bias 0 = mean 0), which the exporter deduplicates;
    # one trained-looking layer keeps the statistics non-trivial for generation.
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        net[7].running_mean.uniform_(-0.5, 0.5)
        net[7].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def deduplicated(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("dedup") / "dedup.onnx"
    torch.onnx.export(_net(), torch.randn(1, 3, 16, 16), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "N"}}, training=torch.onnx.TrainingMode.PRESERVE,
                      do_constant_folding=False)
    api.stamp_model(path, PreprocessingOverrides(mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(16, 16),
                                                 class_names=("a", "b", "c", "d")))
    model = onnx.load(str(path))
    identities = {n.output[0] for n in model.graph.node if n.op_type == "Identity"}
    shared = [n for n in model.graph.node if n.op_type == "BatchNormalization" and set(n.input[1:]) & identities]
    assert shared, "premise: the exporter shares BN parameters through Identity nodes (else this test checks nothing)"
    return str(path)


def test_inspect_reads_the_shared_statistics(deduplicated):
    """Rule: every BN node's statistics are found, the shared ones included."""
    assert api.inspect_model(deduplicated).num_batchnorm == 3
    assert len(bn_statistics(onnx.load(deduplicated))) == 3


@pytest.mark.parametrize("method", ["gaussian", "dgh", "bns", "fdda"])
def test_every_generation_method_runs_on_shared_bn_parameters(deduplicated, method, tmp_path):
    """Rule: generation builds its BN targets through the Identity nodes instead of stopping with
    'scale, bias, mean and var must be initializers or constants'."""
    data = None
    if method == "fdda":  # few-shot: a handful of labelled images, one class per folder
        rng = np.random.default_rng(0)
        data = tmp_path / "real.npz"
        np.savez(data, images=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), labels=np.arange(8) % 4,
                 class_names=np.array(["a", "b", "c", "d"]))
    out = tmp_path / f"{method}.npz"
    api.generate_calibration(deduplicated, method, 16, out, preset_name="fast", data=data, batch_size=8,
                             progress=False)
    inputs = load_calibration(out).inputs
    assert inputs.shape == (16, 3, 16, 16) and np.isfinite(inputs).all()


@pytest.mark.parametrize("reconstruct", ["none", "pdquant"])
def test_quantize_runs_on_shared_bn_parameters(deduplicated, reconstruct, tmp_path):
    """Rule: quantize (which reads the BN statistics for distribution correction too) folds the shared BN layers."""
    calib = tmp_path / "calib.npz"
    api.generate_calibration(deduplicated, "gaussian", 16, calib, progress=False)
    from toolchain.pipeline.config import QuantizeSpec

    spec = QuantizeSpec(w_bits=4, a_bits=4, reconstruct=reconstruct, preset="fast", recon_batch_size=8)
    outcome = api.quantize_model(deduplicated, calib, tmp_path / "q.onnx", config=spec.quant_config(), progress=False)
    ops = {n.op_type for n in onnx.load(str(outcome.path)).graph.node}
    assert "BatchNormalization" not in ops and "QuantizeLinear" in ops
