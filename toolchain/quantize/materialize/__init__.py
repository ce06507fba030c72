"""Quantize step 6, materialize: the QuantPlan and its parameters written out as a QDQ ONNX graph."""
