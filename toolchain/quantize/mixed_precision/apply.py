"""Mixed precision applied to a plan: measure, allocate, re-annotate; the report's sections.

Usage (quant.quantize, between annotate and calibrate):
    config, plan, section = allocate_weight_bits(float_model, plan, calib, config, progress, execution)
    config, plan, section = allocate_activation_bits(float_model, plan, calib, config, progress, execution)

Each returns the config carrying the chosen bits (layer_w_bits / tensor_a_bits), the plan annotated from it,
and what the report says: every layer's or tensor's sensitivity per candidate and its bits, the sizes, the
KL the sum predicts beside the one measured with every choice applied at once, and the seconds it took.
The two allocations are independent: their costs are summed in one objective under two separate budgets,
so the joint optimum is the pair of separate optima.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import onnx

from toolchain.core.execution import Execution
from toolchain.quantize.annotate.placement import QuantPlan, annotate
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.mixed_precision.activations import ActivationProbe
from toolchain.quantize.mixed_precision.allocate import activation_budget_bits, allocate, allocate_activations, budget_bits
from toolchain.quantize.mixed_precision.sensitivity import SensitivityProbe
from toolchain.quantize.report_sections import (
    ActivationAllocationReport,
    LayerChoice,
    TensorChoice,
    WeightAllocationReport,
)

logger = logging.getLogger(__name__)


def allocate_weight_bits(float_model: onnx.ModelProto, plan: QuantPlan, calib: np.ndarray, config: QuantConfig,
                         progress: bool, execution: Execution) -> tuple[QuantConfig, QuantPlan, WeightAllocationReport]:
    """Per-layer weight bits under config.bit_budget (quantize.mixed_precision): the config and plan that carry them, and
    the report's mixed_precision section (every layer's sensitivity per candidate, its bits, the sizes)."""
    budget = config.bit_budget
    if budget is None:
        raise ValueError("allocate_weight_bits needs config.bit_budget")
    dims = {init.name: init.dims for init in float_model.graph.initializer if init.name in plan.weights}
    budget_bits([int(np.prod(dims[w])) for w in plan.weights], budget)  # fails before measuring
    started = time.perf_counter()
    execution.apply_threads()
    probe = SensitivityProbe(float_model, plan, calib, config, progress, device=execution.torch_device())
    layers = probe.layers()
    measured = time.perf_counter() - started
    allocation = allocate(layers, budget)
    config = replace(config, layer_w_bits=allocation.layer_bits)
    bits = dict(allocation.layer_bits)
    # the allocation trusts the layers' KLs to add up: measure the chosen model's (weights only) beside the sum
    together = probe.together(bits)
    section = WeightAllocationReport(
        budget, allocation.layer_bits, allocation.size_bits, round(allocation.average_bits, 4),
        allocation.total_params, allocation.budget_bits, allocation.predicted_kl, allocation.front_size, together,
        round(measured, 2), tuple(LayerChoice(layer.node, layer.weight, layer.params, layer.kl, bits[layer.node])
                                  for layer in layers))
    logger.info("mixed precision: %.2f average weight bits (%d bytes) in %.1f s of sensitivity measurement",
                allocation.average_bits, allocation.size_bytes, measured)
    return config, annotate(float_model, config), section


def allocate_activation_bits(float_model: onnx.ModelProto, plan: QuantPlan, calib: np.ndarray, config: QuantConfig,
                              progress: bool, execution: Execution) -> tuple[QuantConfig, QuantPlan, ActivationAllocationReport]:
    """Per-tensor activation bits under config.act_budget (quantize.mixed_precision.activations): the config and plan that
    carry them, and the report's mixed_precision_activations section."""
    budget = config.act_budget
    if budget is None:
        raise ValueError("allocate_activation_bits needs config.act_budget")
    started = time.perf_counter()
    execution.apply_threads()
    probe = ActivationProbe(float_model, plan, calib, config, progress, device=execution.torch_device(),
                            threads=execution.thread_count, providers=execution.providers)
    activation_budget_bits([probe.elements[t] for t in probe.roots], budget)  # fails before measuring
    tensors = probe.tensors()
    allocation = allocate_activations(tensors, budget)
    measured = time.perf_counter() - started
    bits = dict(allocation.layer_bits)
    together = probe.together(bits)  # the additivity check, as for the weights
    config = replace(config, tensor_a_bits=allocation.layer_bits)
    section = ActivationAllocationReport(
        budget, round(allocation.average_bits, 4), allocation.total_params, allocation.predicted_kl,
        together, round(measured, 2), tuple(probe.fixed),
        tuple(TensorChoice(t.tensor, t.elements, t.kl, bits[t.tensor]) for t in tensors))
    logger.info("mixed precision: %.2f average activation bits in %.1f s of sensitivity measurement",
                allocation.average_bits, measured)
    return config, annotate(float_model, config), section
