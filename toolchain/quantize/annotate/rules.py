"""Quantization rules per op type: which inputs carry data, and whether the output gets its own parameters.

Usage:
    from toolchain.quantize.annotate.rules import rule_for
    rule = rule_for("HardSwish")      # OpRule(kind='own', data_inputs=(0,), ...)
    rule_for("Reshape").kind          # 'shared'
    rule_for("NonMaxSuppression")     # None: no rule, the node stays in float and is reported

Kinds (target ort-x86; shared/docs/qdq-conventions.md):
- `weighted`: Conv, Gemm, MatMul with a constant weight (per-channel, symmetric) and an int32 bias;
  a MatMul of two activations quantizes both inputs (onnxruntime: QLinearMatMul).
- `own`: the output gets its own scale and zero point; each data input is quantized. onnxruntime has
  integer kernels for Add, Mul, Concat, AveragePool, GlobalAveragePool, Sigmoid, LeakyRelu, Softmax,
  Where, MatMul; the others (HardSwish, HardSigmoid, LayerNormalization, Erf, Gelu, Div, ...) run in float
  between DQ and Q there, which the fusion report lists, while runtimes with those kernels (QNN, OpenVINO)
  see a fully quantized graph.
- `shared`: the output reuses its input's parameters (MaxPool, Reshape, Transpose, Split, Resize, ...):
  onnxruntime drops the Q/DQ pair around them only when both sides agree.

`constant_inputs` marks ops whose constant operands are stored quantized (DQ only), since onnxruntime
fuses Add/Mul/Concat/Where only when every input comes from a DequantizeLinear; other constants (LayerNorm
scale and bias, PRelu slopes, Pow exponents) stay float.
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
# The output of these is quantized after a ReLU/Clip(0, x) that alone reads it (onnxruntime drops the activation).
FUSIBLE_PRODUCERS = ("Conv", "Gemm", "MatMul", "Add")
# Outputs in [0, hi]: one-sided ranges with zero point 0 (exact zero, the full grid on the values that occur).
NON_NEGATIVE_OUTPUTS = ("Relu", "Sigmoid", "HardSigmoid", "Softmax")
# Outputs bounded below by a small negative constant: the grid keeps that bound. A per-tensor range search
# shrinks it until the zero point rounds to 0 at 4 bits, which maps the whole negative tail to 0: a small
# MSE but a systematic shift that compounds over blocks (measured on the trained MobileNetV3 at W8A4 with
# MSE ranges: 45.4 % top-1 with the tail cut on two HardSwish outputs, 51.0 % with it kept; FP32 81.7 %).
OUTPUT_FLOORS = {"HardSwish": -0.375, "Gelu": -0.17}  # HardSwish: x = -1.5; GELU: x ~ -0.75 (erf and tanh forms)
# What keeps a floor: a mean of values above it, and a product with a gate in [0, 1] (an SE block's scaling).
FLOOR_KEEPING_POOLS = ("AveragePool", "GlobalAveragePool", "ReduceMean")
GATE_OUTPUTS = ("Sigmoid", "HardSigmoid")
ALL_INPUTS = None  # data_inputs value: every float input


@dataclass(frozen=True)
class OpRule:
    """How annotation treats one op type.

    Attributes:
        kind: 'weighted', 'own' or 'shared' (see the module docstring).
        data_inputs: input positions that carry activations (ALL_INPUTS: every float input).
        constant_inputs: constant operands are quantized too (stored as integers behind a DQ).
        integer_kernel: onnxruntime's CPU provider runs the op on integers when it is wrapped in Q/DQ.
    """

    kind: str
    data_inputs: tuple[int, ...] | None = (0,)
    constant_inputs: bool = False
    integer_kernel: bool = False


_RULES: dict[str, OpRule] = {
    **{op: OpRule("weighted", (0,), integer_kernel=True) for op in WEIGHTED_OPS},
    **{op: OpRule("own", ALL_INPUTS, constant_inputs=True, integer_kernel=True) for op in ("Add", "Mul", "Concat")},
    "Where": OpRule("own", (1, 2), constant_inputs=True, integer_kernel=True),
    **{op: OpRule("own", integer_kernel=True) for op in
       ("AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu", "Softmax", "Relu", "Clip")},
    **{op: OpRule("own", ALL_INPUTS, constant_inputs=True) for op in ("Sub", "Div", "Sum", "Max", "Min")},
    **{op: OpRule("own") for op in
       ("HardSwish", "HardSigmoid", "Tanh", "Erf", "Gelu", "Elu", "Softplus", "PRelu", "LayerNormalization",
        "ReduceMean", "ReduceSum", "Sqrt", "Pow", "Exp", "Log", "Reciprocal", "Neg", "Abs", "LogSoftmax",
        "BatchNormalization")},
    **{op: OpRule("shared") for op in
       ("MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "Slice", "Pad", "Reshape", "Flatten", "Transpose", "Squeeze",
        "Unsqueeze", "Identity", "Split", "Resize", "Expand", "Tile", "Gather", "DepthToSpace", "SpaceToDepth")},
}


def rule_for(op_type: str) -> OpRule | None:
    """The rule of `op_type` (ONNX domain), or None when the quantizer has none."""
    return _RULES.get(op_type)


def ops_with_rules() -> list[str]:
    return sorted(_RULES)
