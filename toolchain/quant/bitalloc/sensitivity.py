"""How much each layer's predictions suffer at each weight bit-width, measured on the calibration set alone.

Usage:
    layers = measure_sensitivity(float_model, plan, calib, config, progress=True)
    layers[0].node, layers[0].params, layers[0].kl[2]     # mean KL(FP || this layer at 2 bits, the rest FP)

The measure is PD-Quant's prediction difference, per layer: the BN-folded float model runs with one layer's
weights quantized as the quantizer would (symmetric per channel, the calibrator's clipping search below 8
bits) and every other tensor in float; the mean KL divergence between the float model's softmax and this
model's over the calibration inputs is the layer's cost at that width. It needs no labels, so it works on
DGH images. Summing the layers' costs assumes they add up; bench/mixed_precision.py measures how well
the sum predicts the KL of the mixed model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import onnx
from tqdm import tqdm

from toolchain.quant.annotate import QuantPlan
from toolchain.quant.config import QuantConfig

EVAL_BATCH = 64


@dataclass(frozen=True)
class LayerSensitivity:
    """One weighted layer: its node, weight tensor, parameter count and mean KL per candidate bit-width."""

    node: str
    weight: str
    params: int
    kl: dict[int, float]

    def to_dict(self) -> dict:
        return {"node": self.node, "weight": self.weight, "params": self.params,
                "kl": {str(bits): value for bits, value in sorted(self.kl.items())}}


def measure_sensitivity(float_model: onnx.ModelProto, plan: QuantPlan, calib: np.ndarray, config: QuantConfig,
                        progress: bool = False, device: str = "cpu") -> list[LayerSensitivity]:
    """Every weighted layer of `plan` at every bit-width of config.bit_budget.choices (see the module docstring)."""
    assert config.bit_budget is not None
    budget = config.bit_budget
    probe = _Probe(float_model, calib[:budget.samples], config, device)
    specs = list(plan.weights.values())
    bar = tqdm(total=len(specs) * len(budget.choices), desc="layer sensitivity", unit="run", file=sys.stderr,
               disable=not progress, leave=False)
    layers = []
    try:
        for spec in specs:
            kl = {}
            for bits in sorted(budget.choices):
                kl[bits] = probe.kl({spec.tensor: (spec.axis, bits)})
                bar.update(1)
            layers.append(LayerSensitivity(spec.node, spec.tensor, probe.size(spec.tensor), kl))
    finally:
        bar.close()
    return layers


def weights_only_kl(float_model: onnx.ModelProto, plan: QuantPlan, calib: np.ndarray, config: QuantConfig,
                    layer_bits: dict[str, int], device: str = "cpu") -> float:
    """Mean KL of the float model with every layer of `layer_bits` (node -> bits) quantized at once, the rest
    float: what the sum of the per-layer sensitivities predicts, measured (the additivity check)."""
    samples = config.bit_budget.samples if config.bit_budget is not None else 256
    probe = _Probe(float_model, calib[:samples], config, device)
    return probe.kl({spec.tensor: (spec.axis, layer_bits[spec.node]) for spec in plan.weights.values()
                     if spec.node in layer_bits})


class _Probe:
    """The float model in the torch executor with its FP predictions on a sample; .kl() swaps weights in and out."""

    def __init__(self, float_model: onnx.ModelProto, sample: np.ndarray, config: QuantConfig, device: str) -> None:
        import torch

        from toolchain.executor import OnnxModule

        self.config = config
        self.module = OnnxModule(float_model).to(device).eval()
        self.sample = torch.from_numpy(np.ascontiguousarray(sample)).to(device)
        with torch.no_grad():
            self.reference = _log_softmax(self.module, self.sample)

    def _buffer(self, tensor: str):
        return getattr(self.module, self.module.initializer_names[tensor])

    def size(self, tensor: str) -> int:
        return int(self._buffer(tensor).numel())

    def kl(self, quantized: dict[str, tuple[int, int]]) -> float:
        """Mean KL with each tensor of `quantized` (tensor -> (axis, bits)) fake-quantized as the quantizer would."""
        import torch

        from toolchain.quant.calibrate import weight_params
        from toolchain.quant.qparams import weight_type
        from toolchain.quant.quantize import weight_calibrator

        calibrator, profile = self.config.effective_calibrator, self.config.profile
        originals = {}
        try:
            for tensor, (axis, bits) in quantized.items():
                buffer = self._buffer(tensor)
                originals[tensor] = buffer.detach().clone()
                weight = originals[tensor].cpu().numpy()
                params = weight_params(weight, axis, weight_type(bits, self.config.reduce_range),
                                       weight_calibrator(calibrator, bits), max_scale_ratio=profile.max_weight_scale_ratio)
                buffer.copy_(torch.from_numpy(params.fake_quantize(weight).astype(np.float32)))
            with torch.no_grad():
                return _mean_kl(self.reference, _log_softmax(self.module, self.sample))
        finally:
            for tensor, original in originals.items():
                self._buffer(tensor).copy_(original)


def _log_softmax(module, sample):
    import torch

    outputs = []
    for start in range(0, len(sample), EVAL_BATCH):
        out = module(sample[start:start + EVAL_BATCH])
        out = out[0] if isinstance(out, tuple) else out
        outputs.append(torch.log_softmax(out.reshape(out.shape[0], -1).double(), dim=1))
    return torch.cat(outputs)


def _mean_kl(reference, quantized) -> float:
    """Mean over samples of KL(P_ref || P_q), from log-probabilities (float64: small KLs stay exact)."""
    return float((reference.exp() * (reference - quantized)).sum(dim=1).mean())
