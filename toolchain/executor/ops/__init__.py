"""Torch kernels for the ONNX ops the executor runs, one builder per op type, in one file per op family.

Usage:
    from toolchain.executor.ops import constant_value, torch_dtype   # importing fills the registry
    from toolchain.executor.registry import supported_ops
    supported_ops()   # ['Abs', 'Add', 'And', 'AveragePool', 'BatchNormalization', 'Cast', ...]

    linear.py        Conv, Gemm, MatMul, BatchNormalization, LayerNormalization
    activations.py   Relu, Sigmoid, HardSwish, HardSigmoid, Clip, Erf, Gelu, Tanh, LeakyRelu, PRelu, Softmax, ...
    arithmetic.py    Add, Sub, Mul, Div, Pow, Mod, Equal, Where, Max, Min, ...
    pooling.py       MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean/Sum/Max/Min
    layout.py        Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Concat, Split, Slice, Pad, Expand, Tile, Resize
    shapes.py        Cast, Constant, ConstantOfShape, Shape, Gather, Range
    quantization.py  QuantizeLinear, DequantizeLinear (fake quantization)

Builders decide at construction everything that does not depend on the input's shape (padding layout,
fast paths such as F.linear for nn.Linear-style Gemm or F.hardtanh for ReLU6-style Clip), so that the
kernels are direct calls into torch.
"""

from toolchain.executor.ops import activations, arithmetic, layout, linear, pooling  # noqa: F401  (they register)
from toolchain.executor.ops.quantization import SUB_BYTE_HOLDERS, integer_range
from toolchain.executor.ops.shapes import constant_value, torch_dtype

__all__ = ["SUB_BYTE_HOLDERS", "constant_value", "integer_range", "torch_dtype"]
