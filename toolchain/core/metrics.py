"""Error measures shared by the stages and the runtimes.

Usage:
    sqnr_db(reference_logits, quantized_logits)    # 10*log10(signal / noise), inf when identical
"""

from __future__ import annotations

import numpy as np


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio 10*log10(sum x^2 / sum (x - y)^2), in dB (inf when identical)."""
    reference = np.asarray(reference, np.float64)
    noise = float(np.sum((reference - np.asarray(approximation, np.float64)) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-30) / noise))
