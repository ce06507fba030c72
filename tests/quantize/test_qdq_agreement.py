"""One graph, two engines: the torch executor and onnxruntime agree on QDQ models.

Against onnxruntime with graph optimisations disabled (Q/DQ computed in float, the same semantics) at
least 99.9 % of the output logits lie within one output quantization step; against onnxruntime with
full optimisation (integer kernels) the top-1 predictions agree on at least 99.5 % of the inputs. The
remaining differences come from float32 summation order (a value near a rounding boundary flips by one
step in one engine and the flip travels downstream).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from toolchain import api
from toolchain.core.cpu import has_vnni
from toolchain.data.calibration import sample_calibration
from toolchain.data.images import open_images
from toolchain.executor import OnnxModule
from toolchain.onnxio.preprocessing import read_preprocessing
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.driver import quantize
from toolchain.quantize.reconstruct import ReconConfig

from agreement import layerwise_agreement
from quant_fixtures import export_random, gaussian_inputs

WITHIN_ONE_STEP = 0.999
TOP1_AGREEMENT = 0.995


def _ort(model: onnx.ModelProto, x: np.ndarray, optimize: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 2
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 500]})[0] for i in range(0, len(x), 500)])


def _executor(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    module = OnnxModule(model)
    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(x[i : i + 500])).numpy() for i in range(0, len(x), 500)])


def assert_engines_agree(model: onnx.ModelProto, x: np.ndarray, output: str = "logits") -> None:
    step = float(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == f"{output}_scale")))
    executor = _executor(model, x)
    unoptimized = _ort(model, x, optimize=False)
    within = float(np.mean(np.abs(executor - unoptimized) <= step * (1 + 1e-5)))
    assert within >= WITHIN_ONE_STEP, f"{within:.5f} of logits within one step ({step:.3g})"
    agreement = float(np.mean(executor.argmax(1) == _ort(model, x, optimize=True).argmax(1)))
    assert agreement >= TOP1_AGREEMENT, f"top-1 agreement {agreement:.4f}"


@pytest.fixture(scope="module")
def resnet20_and_test_set(shared_file, tmp_path_factory):
    """ResNet-20 with the shared weights, 512 real training images for calibration, the 10,000 test inputs."""
    weights = shared_file("weights", "resnet20-12fca82f.th")
    path = api.export_model("resnet20_cifar10", tmp_path_factory.mktemp("r20") / "r20.onnx", weights=weights).path
    model = onnx.load(path)
    pre = read_preprocessing(model)
    calib = sample_calibration(shared_file("datasets", "cifar10-train-jpg.tar.gz"), pre, 512, seed=0).inputs
    test = open_images(shared_file("datasets", "cifar10-test-jpg.tar.gz"), pre)
    inputs = np.concatenate([batch for batch, _ in test.batches(1000)])
    return model, calib, inputs


@pytest.mark.parametrize("w_bits, a_bits, reconstruct", [(8, 8, "none"), (4, 4, "none"), (4, 4, "pdquant")])
def test_resnet20_executor_matches_onnxruntime_on_the_test_set(resnet20_and_test_set, w_bits, a_bits, reconstruct):
    """ResNet-20 (default calibrator, 512 real images; pdquant at the fast preset): the executor agrees with both
    onnxruntime paths on all 10,000 test images, reconstructed models included."""
    model, calib, inputs = resnet20_and_test_set
    recon = ReconConfig.preset(reconstruct, "fast")
    # onnxruntime's 8-bit integer kernels compute the QDQ semantics exactly only where they cannot saturate:
    # on CPUs without VNNI that needs 7-bit weights (measured here, AVX2: 92.5 % top-1 agreement otherwise).
    reduce_range = has_vnni() is False
    config = QuantConfig(w_bits=w_bits, a_bits=a_bits, reduce_range=reduce_range, reconstruction=recon)
    result = quantize(model, calib, config, progress=False)
    assert_engines_agree(result.model, inputs)


@pytest.mark.parametrize("factory", ["toolchain_models.imagenet:resnet18", "toolchain_models.imagenet:mobilenetv2"])
def test_imagenet_models_fuse_fully_and_engines_agree_layer_by_layer(factory):
    """resnet18 / mobilenetv2 (random weights, Gaussian calibration), W8A8: fusion coverage 1.0; fed the same
    quantized inputs, every layer of the executor matches onnxruntime on >= 99.9 % of elements, never by > 1 step."""
    model = export_random(factory, 224)
    result = quantize(model, gaussian_inputs(16, (3, 224, 224), seed=1), QuantConfig(), progress=False)
    assert result.report["fusion"]["coverage"] == 1.0 and result.report["fusion"]["float_ops_left"] == {}
    assert layerwise_agreement(result.model, gaussian_inputs(4, (3, 224, 224), seed=2)) >= WITHIN_ONE_STEP


def test_layerwise_check_catches_a_real_mismatch():
    """The layer-wise check fails when the executor computes a layer differently (here: a scale altered in the
    copy the executor runs), so it is not vacuous."""
    model = export_random("toolchain_models.resnet_cifar:resnet20", 32)
    result = quantize(model, gaussian_inputs(16, (3, 32, 32)), QuantConfig(), progress=False)
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    original_module = OnnxModule

    def tampered(proto, *args, **kwargs):
        for init in proto.graph.initializer:
            if init.name.endswith("conv1.weight_scale"):
                array = numpy_helper.to_array(init) * np.float32(1.5)
                init.CopyFrom(numpy_helper.from_array(array, init.name))
        return original_module(proto, *args, **kwargs)

    with pytest.raises(AssertionError):
        layerwise_agreement(broken, gaussian_inputs(4, (3, 32, 32), seed=2), executor_class=tampered)
