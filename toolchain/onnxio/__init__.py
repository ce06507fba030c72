"""ONNX plumbing below the stages: reading and writing model files (external data, validation), onnxruntime
sessions, graph views, the preprocessing stamp and graph passes."""
