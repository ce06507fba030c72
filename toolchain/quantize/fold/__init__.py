"""Quantize step 1, fold: float graph rewrites before annotation (BN into Conv, Pad into Conv, integer-friendly
rewrites, a static batch, the opset)."""
