"""Target profiles: what each deployment runtime needs of a QDQ model (types, symmetry, placement, shapes).

Usage:
    profile = target_profile("qnn")                 # TargetProfile (frozen)
    profile.check_bits(w_bits=8, a_bits=16)         # ConfigError naming the supported bit-widths otherwise
    profile.activation_type(16)                     # UINT16
    TARGETS                                         # name -> TargetProfile, in the order the docs list them

Each profile is what the runtime's own documentation and, where this machine has the runtime, a
measurement say it turns into integer kernels (shared/docs/qdq-conventions.md, README "Targets"):
- ort-x86: uint8 activations (asymmetric, zero point 0 on ReLU outputs), int8 per-channel weights, int32
  bias, Q->DQ after every quantized op (onnxruntime fuses DQ -> op -> Q groups).
- ort-arm: the same with int8 activations (S8S8), which onnxruntime fuses on ARM builds only.
- openvino: the ort-x86 layout; OpenVINO's low-precision transformations read each Q->DQ pair as a
  FakeQuantize and run Conv/MatMul/Add on u8/i8. 4-bit weights are weight compression there (the
  convolutions decompress them), so W4 is accepted and reported as such, A4 is not.
- qnn: uint8 or uint16 activations, int8 (or int4) per-channel symmetric weights, int32 bias, the batch
  fixed (HTP has no dynamic shapes), the network input at the activation width, per-channel weight scales
  within 2^14 of the layer's largest (HTP's 16-bit Conv is wrong beyond 2^15, measured).
- tensorrt: explicit quantization: int8 symmetric activations (zero point 0), int8 per-channel weights,
  Q/DQ only on the inputs of Conv/Gemm/MatMul and on the skip input of residual Adds, float bias, no Q/DQ
  on the network output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from toolchain.errors import ConfigError
from toolchain.quantize.qparams import IntType, activation_type

TargetName = Literal["ort-x86", "ort-arm", "openvino", "qnn", "tensorrt"]


@dataclass(frozen=True)
class TargetProfile:
    """What one runtime needs of the QDQ model.

    Attributes:
        name: the `--target` value.
        runtime: the runtime that executes it (`toolchain evaluate --runtime`): ort, openvino, qnn, tensorrt.
        weight_bits / activation_bits: the bit-widths the runtime runs (on integers, or as stated in `notes`).
        signed_activations: int8/int16 activations instead of uint8/uint16.
        symmetric_activations: activation zero points are 0 (the range is [-a, a], one-sided or not).
        float_bias: biases stay float initializers (the runtime quantizes them itself) instead of int32 behind a DQ.
        inputs_only: Q/DQ only where the runtime's integer layers read: the inputs of Conv/Gemm/MatMul and
            the skip input of a residual Add; every other tensor stays float and the runtime fuses around it.
        quantize_output: Q -> DQ on the network output (onnxruntime fuses the last layer only with it).
        static_batch: the emitted model has a fixed batch dimension (`--batch`, default 1).
        input_at_activation_bits: the network input is quantized at the activation width, not at 8 bits
            (HTP's layers take one activation type; 8-bit image data is exact at 16 bits).
        integer_domain_pad: a zero Pad runs on the quantized integers (no float op for onnxruntime to leave);
            QNN's HTP refuses such a Pad (measured on ResNet-20's shortcut padding) and takes DQ -> Pad -> Q.
        max_weight_scale_ratio: a layer's per-channel weight scales span at most this factor (smaller ones are
            raised). QNN's HTP computes a 16-bit-activation Conv wrongly in a channel whose scale is more than
            2^15 below the layer's largest (measured on ResNet-20: one near-dead filter at 1/36,700 gave that
            channel 4.6 instead of 0.0007 and the model 14.5 % top-1); 2^14 keeps a factor 2 of margin.
        notes: what the docs table says besides the fields.
    """

    name: str
    runtime: str
    weight_bits: tuple[int, ...]
    activation_bits: tuple[int, ...]
    signed_activations: bool = False
    symmetric_activations: bool = False
    float_bias: bool = False
    inputs_only: bool = False
    quantize_output: bool = True
    static_batch: bool = False
    input_at_activation_bits: bool = False
    integer_domain_pad: bool = True
    max_weight_scale_ratio: float | None = None
    mixed_activations: str | None = None  # None: tensors may differ in activation bits; else why they may not
    notes: str = ""

    def activation_type(self, bits: int) -> IntType:
        return activation_type(bits, signed=self.signed_activations)

    def check_bits(self, w_bits: int, a_bits: int) -> None:
        """ConfigError unless the runtime supports these bit-widths (naming the ones it does)."""
        if w_bits not in self.weight_bits:
            raise ConfigError(f"--target {self.name} supports --w-bits {'/'.join(map(str, self.weight_bits))}, "
                              f"not {w_bits}; choose one of them or another --target")
        if a_bits not in self.activation_bits:
            raise ConfigError(f"--target {self.name} supports --a-bits {'/'.join(map(str, self.activation_bits))}, "
                              f"not {a_bits}; choose one of them or another --target")

    def input_bits(self, a_bits: int, requested: int) -> int:
        return a_bits if self.input_at_activation_bits else requested


TARGETS: dict[str, TargetProfile] = {
    "ort-x86": TargetProfile(
        "ort-x86", "ort", weight_bits=(2, 3, 4, 8), activation_bits=(2, 4, 8),
        notes="8-bit runs on integer kernels (QLinearConv, QGemm, QLinearAdd, ...); 2/4-bit files run as "
              "float emulation in onnxruntime (no kernels below 8 bits)"),
    "ort-arm": TargetProfile(
        "ort-arm", "ort", weight_bits=(2, 3, 4, 8), activation_bits=(2, 4, 8), signed_activations=True,
        notes="S8S8: onnxruntime fuses int8-activation Conv/MatMul groups on ARM builds only (QDQIsInt8Allowed); "
              "on x86 the same file runs, partly on integers"),
    "openvino": TargetProfile(
        "openvino", "openvino", weight_bits=(4, 8), activation_bits=(8,),
        notes="8-bit Conv/MatMul/Add run on u8/i8 kernels; 4-bit weights are decompressed (weight compression)"),
    "qnn": TargetProfile(
        "qnn", "qnn", weight_bits=(4, 8), activation_bits=(8, 16), static_batch=True, input_at_activation_bits=True,
        integer_domain_pad=False, max_weight_scale_ratio=2.0**14,
        mixed_activations="the HTP runs 8- and 16-bit regions only with a DequantizeLinear -> QuantizeLinear "
                          "conversion at each boundary, which this toolchain does not write yet (measured on the "
                          "emulator: without it 4 Q/DQ nodes fall back to the CPU)",
        notes="HTP: every node on the NPU with CPU fallback off; static shapes"),
    "tensorrt": TargetProfile(
        "tensorrt", "tensorrt", weight_bits=(8,), activation_bits=(8,), signed_activations=True,
        symmetric_activations=True, float_bias=True, inputs_only=True, quantize_output=False,
        notes="explicit quantization (Q/DQ placement as TensorRT's docs and ModelOpt place it)"),
}


def target_profile(name: str) -> TargetProfile:
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown target {name!r}: choose one of {', '.join(TARGETS)}") from None
