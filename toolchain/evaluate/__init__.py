"""Stage 4, evaluate: top-1 and agreement of an ONNX model against its FP32 reference, in any runtime."""
