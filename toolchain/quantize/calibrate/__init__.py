"""Quantize step 3, calibrate: activation ranges and weight scales (min/max, MSE, percentile, GPTQ rounding)."""
