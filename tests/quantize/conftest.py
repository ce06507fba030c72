"""Fixtures of the quantizer's tests: a random-weight ResNet-20 and Gaussian calibration inputs (one per module)."""

import pytest

from quant_fixtures import export_random, gaussian_inputs


@pytest.fixture(scope="module")
def resnet20_random():
    return export_random("toolchain_models.resnet_cifar:resnet20", 32)


@pytest.fixture(scope="module")
def calib32():
    return gaussian_inputs(64, (3, 32, 32))
