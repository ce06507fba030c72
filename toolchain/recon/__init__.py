"""Block reconstruction (BRECQ / PD-Quant) of quantized graphs.

Usage:
    from toolchain.recon import ReconConfig                  # light: no torch import
    from toolchain.recon.engine import reconstruct           # the engine (torch); see its contract
"""

from toolchain.recon.config import ReconConfig

__all__ = ["ReconConfig"]
