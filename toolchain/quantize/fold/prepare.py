"""The float graph the quantizer annotates: cleaned up, BN folded, zero Pads folded, integer rewrites, the opset.

Usage:
    float_model, folded = prepare_float_model(model, QuantConfig())          # a copy; folded = BN nodes folded
    float_model, folded = prepare_float_model(model, config, in_place=True)  # the caller gives `model` up
"""

from __future__ import annotations

import onnx

from toolchain.onnxio.passes import cleanup_passes, run_passes
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.fold.batchnorm import FoldBatchNormPass, StandaloneBatchNormToConvPass
from toolchain.quantize.fold.integer_rewrites import integer_rewrite_passes
from toolchain.quantize.fold.opset import upgrade_opset
from toolchain.quantize.fold.pad import FoldZeroPadIntoConvPass
from toolchain.quantize.qparams import storage_type, weight_type


def prepare_float_model(model: onnx.ModelProto, config: QuantConfig, before_folding: list | None = None,
                        in_place: bool = False) -> tuple[onnx.ModelProto, int]:
    """Clean-up, BN folding and the opset the chosen integer types need. Returns (model, folded BN count).

    `before_folding`, when given, receives a copy of the cleaned model with its BN nodes (for the BN
    statistics that distribution correction reads).
    """
    if in_place:  # the caller gives the model up (a large model is then not held twice)
        float_model = model
    else:
        float_model = onnx.ModelProto()
        float_model.CopyFrom(model)
    run_passes(float_model, cleanup_passes())
    if before_folding is not None:
        cleaned = onnx.ModelProto()
        cleaned.CopyFrom(float_model)
        before_folding.append(cleaned)
    before = sum(n.op_type == "BatchNormalization" for n in float_model.graph.node)
    FoldBatchNormPass()(float_model)
    StandaloneBatchNormToConvPass()(float_model)  # pre-activation BN: a depthwise 1x1 Conv, quantized like any layer
    FoldZeroPadIntoConvPass()(float_model)  # TF "SAME" padding: no float Pad between Q/DQ pairs
    run_passes(float_model, integer_rewrite_passes(min(config.layer_activation_bits)))
    folded = before - sum(n.op_type == "BatchNormalization" for n in float_model.graph.node)
    profile = config.profile
    stored = [storage_type(weight_type(bits), config.low_bit_storage) for bits in config.weight_bits_used]
    stored += [storage_type(profile.activation_type(bits), config.low_bit_storage, activation=True)
               for bits in config.activation_bits_used]
    needed = max(t.min_opset for t in stored)
    return upgrade_opset(float_model, needed), folded
