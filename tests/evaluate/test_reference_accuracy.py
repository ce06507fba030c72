"""The numbers issue #2 promises, measured as a user would: export with the shared weights, evaluate in onnxruntime.

ResNet-20 / ResNet-56 on the 10,000 CIFAR-10 JPEG test images: top-1 0.8103 / 0.8320 (measured in
../shared/weights/README.md), 19 / 55 BatchNormalization nodes kept. Tolerance: 5 images (0.0005),
for float summation-order differences between CPUs.
"""

import json

import pytest
from click.testing import CliRunner

from toolchain.cli.commands import cli


@pytest.mark.parametrize("name, weights, top1, num_bn", [
    ("resnet20_cifar10", "resnet20-12fca82f.th", 0.8103, 19),
    ("resnet56_cifar10", "resnet56-4bfd9763.th", 0.8320, 55),
])
def test_exported_cifar_resnet_keeps_bn_and_accuracy(name, weights, top1, num_bn, shared_file, tmp_path):
    """export -> inspect -> evaluate on the JPEG test set reproduces the reference top-1 within 0.0005."""
    weights_path = shared_file("weights", weights)
    test_set = shared_file("datasets", "cifar10-test-jpg.tar.gz")
    model = tmp_path / f"{name}.onnx"
    runner = CliRunner()
    exported = runner.invoke(cli, ["export", name, "--weights", str(weights_path), "-o", str(model)])
    assert exported.exit_code == 0, exported.output
    inspected = json.loads(runner.invoke(cli, ["inspect", str(model), "--json"]).output)
    assert inspected["num_batchnorm"] == num_bn
    result = runner.invoke(cli, ["evaluate", str(model), "--data", str(test_set), "--json"])
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 10000
    assert abs(metrics["top1"] - top1) <= 0.0005, metrics
