"""Stage 1, export: a torch model (or a zoo name) to ONNX with its BatchNormalization nodes kept."""
