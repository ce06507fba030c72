"""Calibration: observe activations in onnxruntime, then choose scales and zero points.

Usage:
    observations = observe_activations(float_model, tensors, inputs, batch_size=64, samples_per_tensor=1 << 18)
    params = activation_params(observations[t], spec, "mse", qtype)
    w_params = weight_params(weight_array, axis=0, qtype=weight_type(4), calibrator="mse")

Calibrators:
- minmax: the observed range.
- percentile: the `percentile`-th percentile of the values (and the (100 - p)-th for the low end).
- mse: the clipping range that minimises the mean squared quantization error (grid search; per output
  channel for weights). Activations keep a random sample of `samples_per_tensor` values per tensor for
  the searches, so memory does not grow with the calibration set.

Memory: the state kept per tensor is fixed (min, max, at most `samples_per_tensor` values), and each
onnxruntime run holds every exposed tensor of one batch, so the batch shrinks below `batch_size` when
one sample's exposed tensors are large (224x224 models): `batch_rows` keeps a batch within
OUTPUT_BYTES. Nothing grows with the number of calibration images but the images themselves.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from toolchain.onnxio.sessions import exposing, inference_session
from toolchain.quantize.annotate.placement import ActivationSpec
from toolchain.quantize.qparams import IntType, QParams, asymmetric_params, floored_params, one_sided_params, symmetric_params

_MSE_GRID = np.linspace(1.0, 0.05, 96)  # fractions of the observed range tried by the MSE search
OUTPUT_BYTES = 256 << 20  # exposed tensors of one onnxruntime batch, at most (one sample always runs)


@dataclass(frozen=True, eq=False)
class Observation:
    """What calibration saw of one tensor: its exact range and a random sample of its values."""

    minimum: float
    maximum: float
    sample: np.ndarray


def batch_rows(session: ort.InferenceSession, input_name: str, output_names: list[str], sample: np.ndarray,
               batch_size: int, budget: int = OUTPUT_BYTES) -> int:
    """Samples per run: `batch_size`, fewer when one sample's `output_names` exceed budget / batch_size; the
    model's own batch when its input fixes one (an export without a dynamic batch axis)."""
    fixed = next(i.shape[0] for i in session.get_inputs() if i.name == input_name)
    if isinstance(fixed, int) and fixed > 0:
        return fixed
    per_sample = sum(a.nbytes for a in session.run(output_names, {input_name: sample[:1]}))
    return max(1, min(batch_size, budget // max(1, per_sample)))


def observe_activations(
    model: onnx.ModelProto,
    tensors: list[str],
    inputs: np.ndarray,
    batch_size: int = 64,
    samples_per_tensor: int = 1 << 18,
    seed: int = 0,
    progress: bool = True,
    threads: int = 2,
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
) -> dict[str, Observation]:
    """Run the float model on `inputs` with `tensors` exposed as outputs; min, max and a sample of each."""
    input_name = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    with exposing(model, [t for t in tensors if t != input_name]) as probe:
        session = inference_session(probe, options, providers)
    output_names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    batch_size = batch_rows(session, input_name, output_names, inputs, batch_size)
    batches = range(0, len(inputs), batch_size)
    per_batch = max(1, -(-samples_per_tensor // len(batches)))
    minimum = {t: np.inf for t in tensors}
    maximum = {t: -np.inf for t in tensors}
    samples: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for start in tqdm(batches, desc="calibrate", unit="batch", file=sys.stderr, disable=not progress):
        batch = inputs[start : start + batch_size]
        values = dict(zip(output_names, session.run(output_names, {input_name: batch})))
        values[input_name] = batch
        for tensor in tensors:
            flat = values[tensor].reshape(-1)
            minimum[tensor] = min(minimum[tensor], float(flat.min()))
            maximum[tensor] = max(maximum[tensor], float(flat.max()))
            take = flat if flat.size <= per_batch else flat[rng.integers(0, flat.size, per_batch)]
            samples[tensor].append(take.astype(np.float32, copy=True))
    return {t: Observation(minimum[t], maximum[t], np.concatenate(samples[t])) for t in tensors}


def constant_observation(value: np.ndarray) -> Observation:
    flat = np.asarray(value, np.float32).reshape(-1)
    return Observation(float(flat.min()), float(flat.max()), flat)


def activation_params(obs: Observation, spec: ActivationSpec, calibrator: str, qtype: IntType, percentile: float = 99.99,
                      symmetric: bool = False) -> QParams:
    """Per-tensor parameters for one activation from what calibration observed.

    `symmetric` (TensorRT): zero point 0 and the range [-a, a], one-sided tensors included; `a` is the
    largest |value|, its percentile, or the MSE-best fraction of it."""
    if symmetric:
        absmax = max(abs(obs.minimum), abs(obs.maximum))
        if calibrator == "percentile":
            absmax = float(np.percentile(np.abs(obs.sample), percentile))
        elif calibrator == "mse":
            absmax = _best_top(obs.sample, absmax, lambda top: symmetric_params(np.float32(top), qtype, None))
        return symmetric_params(np.float32(absmax), qtype, None)
    floor = spec.floor
    if floor is not None:  # only the top end is chosen: the known floor stays on the grid
        hi = max(obs.maximum, 0.0)
        if calibrator == "percentile":
            hi = float(np.percentile(obs.sample, percentile))
        elif calibrator == "mse":
            hi = _best_top(obs.sample, hi, lambda top: floored_params(floor, top, qtype))
        return floored_params(floor, hi, qtype)
    if spec.one_sided:
        hi = max(obs.maximum, 0.0)
        if calibrator == "percentile":
            hi = float(np.percentile(obs.sample, percentile))
        elif calibrator == "mse":
            hi = _best_top(obs.sample, hi, lambda top: one_sided_params(top, qtype))
        return one_sided_params(hi, qtype)
    lo, hi = min(obs.minimum, 0.0), max(obs.maximum, 0.0)
    if calibrator == "percentile":
        lo, hi = float(np.percentile(obs.sample, 100.0 - percentile)), float(np.percentile(obs.sample, percentile))
    elif calibrator == "mse":
        lo, hi = _best_two_sided(obs.sample, lo, hi, qtype)
    return asymmetric_params(lo, hi, qtype)


def _error(sample: np.ndarray, params: QParams) -> float:
    return float(np.mean((sample - params.fake_quantize(sample)) ** 2))


def _best_top(sample: np.ndarray, hi: float, params_for: Callable[[float], QParams]) -> float:
    """The top end (a fraction of `hi`) whose grid `params_for(top)` has the least squared error."""
    if hi <= 0.0:
        return hi
    errors = [_error(sample, params_for(hi * f)) for f in _MSE_GRID]
    return hi * float(_MSE_GRID[int(np.argmin(errors))])


def _best_two_sided(sample: np.ndarray, lo: float, hi: float, qtype: IntType) -> tuple[float, float]:
    """Shrink both ends together, then refine each end with the other fixed."""
    if hi - lo <= 0.0:
        return lo, hi
    errors = [_error(sample, asymmetric_params(lo * f, hi * f, qtype)) for f in _MSE_GRID]
    f = float(_MSE_GRID[int(np.argmin(errors))])
    lo, hi = lo * f, hi * f
    low_errors = [_error(sample, asymmetric_params(lo * g, hi, qtype)) for g in _MSE_GRID]
    lo *= float(_MSE_GRID[int(np.argmin(low_errors))])
    high_errors = [_error(sample, asymmetric_params(lo, hi * g, qtype)) for g in _MSE_GRID]
    hi *= float(_MSE_GRID[int(np.argmin(high_errors))])
    return lo, hi


def weight_params(weight: np.ndarray, axis: int, qtype: IntType, calibrator: str,
                  max_scale_ratio: float | None = None) -> QParams:
    """Symmetric per-channel parameters; with "mse" the clipping threshold is searched per channel.

    `max_scale_ratio` (a target's limit, e.g. QNN's HTP): no channel's scale is below the layer's largest
    divided by it; a smaller channel (a near-dead filter) is raised to that floor, so its few tiny weights
    round on the coarser grid while its bias, exact at any scale, still carries the channel."""
    channels = np.moveaxis(np.asarray(weight, np.float32), axis, 0).reshape(weight.shape[axis], -1)
    absmax = np.maximum(channels.max(axis=1), -channels.min(axis=1))  # no |weight| temporary (large models)
    if calibrator != "mse":
        return symmetric_params(_floored(absmax, max_scale_ratio), qtype, axis)
    best_error = np.full(absmax.shape, np.inf)
    best = absmax.copy()
    for fraction in _MSE_GRID:
        candidate = symmetric_params(absmax * fraction, qtype, 0)
        error = ((channels - candidate.fake_quantize(channels)) ** 2).sum(axis=1)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best = np.where(better, absmax * fraction, best)
    return symmetric_params(_floored(best, max_scale_ratio), qtype, axis)


def _floored(thresholds: np.ndarray, max_ratio: float | None) -> np.ndarray:
    if max_ratio is None or thresholds.size == 0:
        return thresholds
    return np.maximum(thresholds, thresholds.max() / np.float32(max_ratio)).astype(np.float32)


def weight_calibrator(calibrator: str, bits: int) -> str:
    """The clipping search for weights: MSE below 8 bits only.

    Percentile clipping is for activation outliers, so weights keep their exact range with it. At 8 bits
    the rounding error is tiny and clipping trades it for a larger one on the largest weights: measured on
    ResNet-20 W8A8 (512 real images), exact weight ranges with MSE activations give 81.34 % against 81.22 %
    with MSE-clipped weights.
    """
    return "mse" if calibrator == "mse" and bits < 8 else "minmax"
