"""Mixed precision: per-layer weight bits chosen zero-shot under a size budget (before annotate).

Usage:
    sensitivity = measure_sensitivity(float_model, plan, calib, config)   # per layer and candidate bits: KL
    allocation = allocate(sensitivity, config.bit_budget)                 # exact: the least total KL that fits
    config = replace(config, layer_w_bits=allocation.layer_bits)

sensitivity.py: one layer at b bits, the rest in float, the prediction difference on the calibration set;
compensate.py: the layer rounded as its input Hessian allows (GPTQ-style), for a sensitivity that sees what
reconstruction will recover;
allocate.py: the multiple-choice knapsack over layers, solved exactly by a Pareto-front dynamic programme.
"""

from toolchain.quant.bitalloc.allocate import Allocation, allocate, budget_bits
from toolchain.quant.bitalloc.sensitivity import LayerSensitivity, SensitivityProbe, measure_sensitivity, weights_only_kl

__all__ = ["Allocation", "LayerSensitivity", "SensitivityProbe", "allocate", "budget_bits", "measure_sensitivity", "weights_only_kl"]
