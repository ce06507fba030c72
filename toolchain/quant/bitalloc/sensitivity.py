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
    import torch

    from toolchain.executor import OnnxModule
    from toolchain.quant.calibrate import weight_params
    from toolchain.quant.qparams import weight_type
    from toolchain.quant.quantize import weight_calibrator

    assert config.bit_budget is not None
    budget = config.bit_budget
    module = OnnxModule(float_model).to(device).eval()
    sample = torch.from_numpy(np.ascontiguousarray(calib[:budget.samples])).to(device)
    with torch.no_grad():
        reference = _log_softmax(module, sample)
    calibrator = config.effective_calibrator
    profile = config.profile
    specs = list(plan.weights.values())
    bar = tqdm(total=len(specs) * len(budget.choices), desc="layer sensitivity", unit="run", file=sys.stderr,
               disable=not progress, leave=False)
    layers = []
    try:
        for spec in specs:
            buffer = getattr(module, module.initializer_names[spec.tensor])
            original = buffer.detach().clone()
            weight = original.cpu().numpy()
            kl = {}
            for bits in sorted(budget.choices):
                params = weight_params(weight, spec.axis, weight_type(bits, config.reduce_range),
                                       weight_calibrator(calibrator, bits), max_scale_ratio=profile.max_weight_scale_ratio)
                buffer.copy_(torch.from_numpy(params.fake_quantize(weight).astype(np.float32)))
                with torch.no_grad():
                    kl[bits] = _mean_kl(reference, _log_softmax(module, sample))
                bar.update(1)
            buffer.copy_(original)
            layers.append(LayerSensitivity(spec.node, spec.tensor, int(weight.size), kl))
    finally:
        bar.close()
    return layers


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
