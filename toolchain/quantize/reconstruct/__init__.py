"""Block reconstruction (BRECQ / PD-Quant) of quantized graphs.

Usage:
    from toolchain.quantize.reconstruct import ReconConfig                  # light: no torch import
    from toolchain.quantize.reconstruct.engine import reconstruct           # the engine (torch); see its contract
"""

from toolchain.quantize.reconstruct.config import ReconConfig

__all__ = ["ReconConfig"]
