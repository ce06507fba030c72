"""How much each layer's predictions suffer at each weight bit-width, measured on the calibration set alone.

Usage:
    probe = SensitivityProbe(float_model, plan, calib, config, progress=True)
    layers = probe.layers()
    layers[0].node, layers[0].params, layers[0].kl[2]     # mean KL(FP || this layer at 2 bits, the rest FP)
    probe.together({"/conv1/Conv": 8, ...})              # the KL of those layers quantized at once (additivity)

The measure is PD-Quant's prediction difference, per layer: the BN-folded float model runs with one layer's
weights quantized as the quantizer would (symmetric per channel, the calibrator's clipping search below 8
bits) and every other tensor in float; the mean KL divergence between the float model's softmax and this
model's over the calibration inputs is the layer's cost at that width. It needs no labels, so it works on
DGH images. The layer's weights are rounded to nearest (BitBudget.rounding "nearest") or with compensation
("compensated", mixed_precision.sensitivity (compensated rounding): each input column's rounding error spread over the others by the
layer's input Hessian, a closed-form stand-in for the rounding that reconstruction learns later). Summing
the layers' costs assumes they add up; the report and bench/mixed_precision.py measure how well the sum
predicts the KL of the mixed model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import onnx
from tqdm import tqdm

from toolchain.quantize.annotate.placement import QuantPlan
from toolchain.quantize.calibrate.gptq import compensated_weight, input_hessians
from toolchain.quantize.calibrate.ranges import weight_calibrator, weight_params
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.qparams import weight_type

EVAL_BATCH = 64


@dataclass(frozen=True)
class LayerSensitivity:
    """One weighted layer: its node, weight tensor, parameter count and mean KL per candidate bit-width."""

    node: str
    weight: str
    params: int
    kl: dict[int, float]


class SensitivityProbe:
    """The float model ready to measure: per-layer sensitivities, then the chosen plan's KL, from one set-up
    (the float predictions and, for compensated rounding, the layers' input Hessians are computed once)."""

    def __init__(self, float_model: onnx.ModelProto, plan: QuantPlan, calib: np.ndarray, config: QuantConfig,
                 progress: bool = False, device: str = "cpu") -> None:
        samples = config.bit_budget.samples if config.bit_budget is not None else 256
        self.plan, self.config, self.progress = plan, config, progress
        self._probe = _Probe(float_model, calib[:samples], config, device,
                             _hessians(float_model, plan, calib, config, progress))

    def layers(self) -> list[LayerSensitivity]:
        """Every weighted layer of the plan at every bit-width of config.bit_budget.choices (module docstring)."""
        budget = self.config.bit_budget
        assert budget is not None and budget.choices is not None, "QuantConfig fills in the choices of a budget"
        choices = sorted(budget.choices)
        specs = list(self.plan.weights.values())
        bar = tqdm(total=len(specs) * len(choices), desc="layer sensitivity", unit="run", file=sys.stderr,
                   disable=not self.progress, leave=False)
        layers = []
        try:
            for spec in specs:
                kl = {}
                for bits in choices:
                    kl[bits] = self._probe.kl({spec.tensor: (spec.axis, bits)})
                    bar.update(1)
                layers.append(LayerSensitivity(spec.node, spec.tensor, self._probe.size(spec.tensor), kl))
        finally:
            bar.close()
        return layers

    def together(self, layer_bits: dict[str, int]) -> float:
        """Mean KL of the float model with every layer of `layer_bits` (node -> bits) quantized at once, the rest
        float: what the sum of the per-layer sensitivities predicts, measured (the additivity check)."""
        return self._probe.kl({spec.tensor: (spec.axis, layer_bits[spec.node]) for spec in self.plan.weights.values()
                               if spec.node in layer_bits})


def measure_sensitivity(float_model: onnx.ModelProto, plan: QuantPlan, calib: np.ndarray, config: QuantConfig,
                        progress: bool = False, device: str = "cpu") -> list[LayerSensitivity]:
    """SensitivityProbe(...).layers(): every layer at every candidate bit-width."""
    return SensitivityProbe(float_model, plan, calib, config, progress, device).layers()


def weights_only_kl(float_model: onnx.ModelProto, plan: QuantPlan, calib: np.ndarray, config: QuantConfig,
                    layer_bits: dict[str, int], device: str = "cpu") -> float:
    """SensitivityProbe(...).together(layer_bits): the KL of those layers quantized at once."""
    return SensitivityProbe(float_model, plan, calib, config, device=device).together(layer_bits)


def _hessians(float_model: onnx.ModelProto, plan: QuantPlan, calib: np.ndarray, config: QuantConfig,
              progress: bool = False) -> dict:
    """The layers' input Hessians when the budget asks for compensated rounding, else none (round to nearest)."""
    budget = config.bit_budget
    if budget is None or budget.rounding != "compensated":
        return {}

    return input_hessians(float_model, plan, calib[:budget.samples], progress=progress)


class _Probe:
    """The float model in the torch executor with its FP predictions on a sample; .kl() swaps weights in and out."""

    def __init__(self, float_model: onnx.ModelProto, sample: np.ndarray, config: QuantConfig, device: str,
                 hessians: dict) -> None:
        import torch  # deferred: torch loads only when this runs (start-up time)

        from toolchain.executor import OnnxModule  # deferred: torch loads only when this runs (start-up time)

        self.config = config
        self.hessians = hessians
        self.module = OnnxModule(float_model).to(device).eval()
        self.sample = torch.from_numpy(np.ascontiguousarray(sample)).to(device)
        with torch.no_grad():
            self.reference = log_probabilities(self.module, self.sample)

    def _buffer(self, tensor: str):
        return getattr(self.module, self.module.initializer_names[tensor])

    def size(self, tensor: str) -> int:
        return int(self._buffer(tensor).numel())

    def kl(self, quantized: dict[str, tuple[int, int]]) -> float:
        """Mean KL with each tensor of `quantized` (tensor -> (axis, bits)) fake-quantized as the quantizer would."""
        import torch  # deferred: torch loads only when this runs (start-up time)


        calibrator, profile = self.config.effective_calibrator, self.config.profile
        originals = {}
        try:
            for tensor, (axis, bits) in quantized.items():
                buffer = self._buffer(tensor)
                originals[tensor] = buffer.detach().clone()
                weight = originals[tensor].cpu().numpy()
                params = weight_params(weight, axis, weight_type(bits, self.config.reduce_range),
                                       weight_calibrator(calibrator, bits), max_scale_ratio=profile.max_weight_scale_ratio)
                hessian = self.hessians.get(tensor)
                fake = (params.fake_quantize(weight) if hessian is None or bits >= 8  # 8 bits: nothing to compensate
                        else compensated_weight(weight, axis, params, hessian))
                buffer.copy_(torch.from_numpy(fake.astype(np.float32)))
            with torch.no_grad():
                return mean_kl(self.reference, log_probabilities(self.module, self.sample))
        finally:
            for tensor, original in originals.items():
                self._buffer(tensor).copy_(original)


def log_probabilities(module, sample):
    import torch  # deferred: torch loads only when this runs (start-up time)

    outputs = []
    for start in range(0, len(sample), EVAL_BATCH):
        out = module(sample[start:start + EVAL_BATCH])
        out = out[0] if isinstance(out, tuple) else out
        outputs.append(torch.log_softmax(out.reshape(out.shape[0], -1).double(), dim=1))
    return torch.cat(outputs)


def mean_kl(reference, quantized) -> float:
    """Mean over samples of KL(P_ref || P_q), from log-probabilities (float64: small KLs stay exact)."""
    return float((reference.exp() * (reference - quantized)).sum(dim=1).mean())
