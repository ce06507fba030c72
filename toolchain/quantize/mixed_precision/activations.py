"""How much the predictions suffer when one activation tensor is quantized at each width, on the calibration set.

Usage:
    probe = ActivationProbe(float_model, plan, calib, config, progress=True)
    tensors = probe.tensors()
    tensors[0].tensor, tensors[0].elements, tensors[0].kl[4]   # mean KL(FP || this tensor at 4 bits, the rest FP)
    probe.together({"/layer1/relu": 8, ...})                   # those tensors quantized at once (additivity)

The same measure as the weights' (quantize.mixed_precision.sensitivity): the BN-folded float model runs in the torch
executor with one tensor fake-quantized as the quantizer would quantize it (per tensor, asymmetric, the
calibrator's range for that width, found on the same calibration sample) and everything else in float; the
cost is the mean KL divergence between the float model's softmax and this model's. No labels needed.

Which tensors: every activation the plan quantizes with parameters of its own, except the network input
(it keeps --input-bits) and constants. A tensor whose parameters other tensors share (the outputs of
pass-through ops such as MaxPool or Reshape) carries their bits, so its size counts theirs too: `elements`
is the number of values per input image of the tensor and of every tensor sharing its parameters.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import numpy as np
import onnx
from tqdm import tqdm

from toolchain.quantize.annotate.placement import QuantPlan
from toolchain.quantize.calibrate.ranges import activation_params, observe_activations
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.mixed_precision.sensitivity import log_probabilities, mean_kl
from toolchain.quantize.qparams import QParams


@dataclass(frozen=True)
class TensorSensitivity:
    """One activation tensor: its values per input (with those sharing its parameters) and mean KL per width."""

    tensor: str
    elements: int
    kl: dict[int, float]


def allocatable_tensors(float_model: onnx.ModelProto, plan: QuantPlan) -> list[str]:
    """The activations an allocation gives bits to (module docstring), in graph order."""
    inputs = {i.name for i in float_model.graph.input}
    return [t for t, spec in plan.activations.items()
            if spec.shared_with is None and not spec.constant and t not in inputs]


class ActivationProbe:
    """The float model ready to measure activation sensitivities and the chosen plan's KL (one set-up: the float
    predictions, every tensor's size and its quantization parameters at every candidate width)."""

    def __init__(self, float_model: onnx.ModelProto, plan: QuantPlan, calib: np.ndarray, config: QuantConfig,
                 progress: bool = False, device: str = "cpu", threads: int = 2,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        import torch  # deferred: torch loads only when this runs (start-up time)

        from toolchain.executor import OnnxModule  # deferred: torch loads only when this runs (start-up time)

        budget = config.act_budget
        assert budget is not None and budget.choices is not None  # QuantConfig fills the choices in
        self.choices = tuple(sorted(budget.choices))
        sample = calib[:budget.samples]
        self.plan, self.progress = plan, progress
        producers = {node.output[0]: node.name for node in float_model.graph.node if len(node.output) == 1}
        self.module = OnnxModule(float_model).to(device).eval()
        runtime = {name for _, name in self.module.runtime_nodes}
        candidates = allocatable_tensors(float_model, plan)
        # the executor replaces single outputs only: a tensor of a multi-output node (Split) keeps config.a_bits
        self.roots = [t for t in candidates if producers.get(t) in runtime]
        self.fixed = [t for t in candidates if producers.get(t) not in runtime]
        observed = observe_activations(float_model, self.roots, sample, config.calib_batch_size,
                                       config.samples_per_tensor, progress=progress, threads=threads,
                                       providers=providers)
        profile = config.profile
        self.params: dict[tuple[str, int], QParams] = {
            (t, bits): activation_params(observed[t], replace(plan.activations[t], bits=bits),
                                         config.effective_calibrator, profile.activation_type(bits), config.percentile,
                                         symmetric=profile.symmetric_activations)
            for t in self.roots for bits in self.choices}
        self.producer = {t: producers[t] for t in self.roots}
        self.sample = torch.from_numpy(np.ascontiguousarray(sample)).to(device)
        self.elements = self._elements(producers, runtime)
        with torch.no_grad():
            self.reference = log_probabilities(self.module, self.sample)

    def _elements(self, producers: dict[str, str], runtime: set[str]) -> dict[str, int]:
        """Values per input of every root with the tensors sharing its parameters, from one forward pass."""
        import torch  # deferred: torch loads only when this runs (start-up time)

        sizes: dict[str, int] = {}
        shared = {t: self.plan.root(t) for t, spec in self.plan.activations.items() if spec.shared_with is not None}
        measured = [t for t in (*self.roots, *shared) if producers.get(t) in runtime]

        def record(tensor: str):
            def hook(_inputs, output):
                sizes[tensor] = int(output[0].numel()) if output.dim() > 0 else 1
                return output
            return hook

        with torch.no_grad(), self.module.output_hooks({producers[t]: record(t) for t in measured}):
            self.module(self.sample[:1])
        totals = {t: sizes[t] for t in self.roots}
        for tensor, root in shared.items():
            if root in totals:  # a shared tensor whose producer has several outputs counts as its root's size
                totals[root] += sizes.get(tensor, sizes[root])
        return totals

    def tensors(self) -> list[TensorSensitivity]:
        """Every allocatable tensor at every candidate width (module docstring)."""
        bar = tqdm(total=len(self.roots) * len(self.choices), desc="activation sensitivity", unit="run",
                   file=sys.stderr, disable=not self.progress, leave=False)
        result = []
        try:
            for tensor in self.roots:
                kl = {}
                for bits in self.choices:
                    kl[bits] = self.together({tensor: bits})
                    bar.update(1)
                result.append(TensorSensitivity(tensor, self.elements[tensor], kl))
        finally:
            bar.close()
        return result

    def together(self, tensor_bits: dict[str, int]) -> float:
        """Mean KL with every tensor of `tensor_bits` (tensor -> bits) fake-quantized at once, the rest float."""
        import torch  # deferred: torch loads only when this runs (start-up time)

        hooks = {self.producer[t]: _fake_quantizer(self.params[t, bits]) for t, bits in tensor_bits.items()}
        with torch.no_grad(), self.module.output_hooks(hooks):
            return mean_kl(self.reference, log_probabilities(self.module, self.sample))


def _fake_quantizer(params: QParams):
    """An output hook quantizing a tensor per tensor as QuantizeLinear/DequantizeLinear with `params` would."""
    scale, zero = float(params.scale), float(params.zero_point)
    low, high = float(params.low), float(params.qtype.qmax)

    def hook(_inputs, output):
        return (output.div(scale).round().add(zero).clamp(low, high) - zero) * scale
    return hook
