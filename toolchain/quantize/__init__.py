"""The QDQ quantizer: fold BN, annotate every tensor, calibrate, materialise Q/DQ, report.

Usage:
    from toolchain.quantize import QuantConfig, quantize
    result = quantize(model_proto, calib_inputs, QuantConfig(w_bits=4, a_bits=4))
    result.model            # QDQ onnx.ModelProto
    result.report           # dict: per-layer bits/scales/SQNR and fusion coverage
"""
