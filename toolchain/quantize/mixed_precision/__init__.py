"""Mixed precision: per-layer weight bits and per-tensor activation bits chosen zero-shot under budgets.

Usage:
    sensitivity = measure_sensitivity(float_model, plan, calib, config)   # per layer and candidate bits: KL
    allocation = allocate(sensitivity, config.bit_budget)                 # exact: the least total KL that fits
    config = replace(config, layer_w_bits=allocation.layer_bits)
    tensors = ActivationProbe(float_model, plan, calib, config).tensors()  # activations: the same, per tensor
    config = replace(config, tensor_a_bits=allocate_activations(tensors, config.act_budget).layer_bits)

sensitivity.py: one layer at b bits, the rest in float, the prediction difference on the calibration set;
quant/gptq.py (one layer down, shared with the quantizer): the layer rounded as its input Hessian allows,
for a sensitivity that sees what reconstruction will recover;
activations.py: one activation tensor at b bits, the rest in float, the same measure;
allocate.py: the multiple-choice knapsack over layers, solved exactly by a Pareto-front dynamic programme.
"""

from toolchain.quantize.mixed_precision.activations import ActivationProbe, TensorSensitivity, allocatable_tensors
from toolchain.quantize.mixed_precision.allocate import Allocation, activation_budget_bits, allocate, allocate_activations, budget_bits
from toolchain.quantize.mixed_precision.sensitivity import LayerSensitivity, SensitivityProbe, measure_sensitivity, weights_only_kl

__all__ = ["ActivationProbe", "Allocation", "LayerSensitivity", "SensitivityProbe", "TensorSensitivity",
           "activation_budget_bits", "allocatable_tensors", "allocate", "allocate_activations", "budget_bits",
           "measure_sensitivity", "weights_only_kl"]
