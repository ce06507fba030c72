"""ONNX-centric post-training quantization toolchain.

Usage:
    toolchain export resnet20_cifar10 -o resnet20.onnx     # BatchNormalization nodes kept
    toolchain inspect resnet20.onnx
    toolchain evaluate resnet20.onnx --data ../shared/datasets/cifar10-test-jpg.tar.gz
"""

__version__ = "0.1.0"
