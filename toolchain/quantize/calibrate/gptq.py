"""GPTQ rounding: each layer's weights rounded as well as its inputs allow, in closed form.

Usage:
    hessians = input_hessians(float_model, plan, calib, threads=1)        # weight tensor -> LayerHessian
    fake = compensated_weight(weight, axis, params, hessians[tensor])     # float32, the weight's shape
    integers = gptq_integers(float_model, plan, weights, calib)           # weight tensor -> integers, for materialize

Rounding to nearest minimises each weight's error; what matters is the layer's output. This rounds one
input column at a time and spreads each column's error over the columns not yet rounded, weighted by the
inverse of the layer's input Hessian H = E[x x^T] (Optimal Brain Quantization as GPTQ computes it,
Frantar et al., 2023, with the quantizer's own per-channel scales): the least-squares output error of a
greedy rounding, in milliseconds per layer. Two users:

- the quantizer without reconstruction (`--weight-rounding gptq`, the default there). On EfficientNet-Lite0
  at W8A8 nearest rounding alone cost 3.6 points of top-1 agreement in the 27-input stem, where a few
  BN-folded filters of large weights carry a small signal on a large offset (17.7 dB SQNR at 8 bits); see
  bench/results/imagenet.md;
- the mixed-precision sensitivity (quantize.mixed_precision), which must rank layers by the error reconstruction will
  leave, not by the raw rounding error: a layer with many inputs per output (ResNet-20's 576 in layer3)
  recovers much of it, the 27-input stem almost none. OBC (Frantar & Alistarh, 2022) feeds such per-layer
  errors to the same kind of bit-allocation programme.

H is estimated from at most MAX_COLUMNS input patches per layer (positions sampled uniformly at random with
a fixed seed), accumulated batch by batch, so large inputs never sit in memory whole. The inputs are the
float model's (not the partly quantized model's): at 8 bits the difference is far below the rounding error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tqdm import tqdm

from toolchain.quantize.annotate.placement import QuantPlan
from toolchain.quantize.qparams import QParams

MAX_COLUMNS = 1 << 15  # input patches per layer for H: 32k columns keep H's estimate well inside rounding noise
DAMPING = 0.01  # of H's mean diagonal, added to it: GPTQ's value; keeps the inverse defined for dead inputs
BATCH = 16


@dataclass(frozen=True)
class LayerHessian:
    """E[x x^T] of one layer's input patches, per group: shape (groups, fan_in, fan_in), float64."""

    matrix: np.ndarray

    @property
    def groups(self) -> int:
        return int(self.matrix.shape[0])


@dataclass(frozen=True)
class _Patches:
    """How a weighted node's input becomes the columns its weight rows multiply."""

    input: str
    kind: str  # "conv" or "dense"
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, right, top, bottom (torch's F.pad order)
    groups: int = 1


def input_hessians(float_model: onnx.ModelProto, plan: QuantPlan, calib: np.ndarray, threads: int = 1,
                   seed: int = 0, progress: bool = False) -> dict[str, LayerHessian]:
    """H of every weighted layer of `plan` whose input patches are understood (2-D Conv with explicit pads,
    Gemm without transA, MatMul); the others are left out, and their sensitivity rounds to nearest."""
    import onnxruntime as ort  # deferred: onnxruntime loads only when this runs (start-up time)
    import torch  # deferred: torch loads only when this runs (start-up time)

    from toolchain.onnxio.sessions import exposing, inference_session  # deferred: onnxruntime loads only when this runs (start-up time)
    from toolchain.quantize.calibrate.ranges import batch_rows  # deferred: onnxruntime loads only when this runs (start-up time)

    nodes = {node.name: node for node in float_model.graph.node}
    constants = {init.name: init for init in float_model.graph.initializer}
    patches = {}
    for tensor, spec in plan.weights.items():
        found = _patches(nodes[spec.node], constants[tensor])
        if found is not None and found.input not in constants:  # a product of two constants has nothing to learn
            patches[tensor] = found
    input_name = next(i.name for i in float_model.graph.input if i.name not in constants)
    wanted = sorted({p.input for p in patches.values()} - {input_name})
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    with exposing(float_model, wanted) as probe:
        session = inference_session(probe, options)
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(patches, 0)
    rows = batch_rows(session, input_name, wanted, calib, BATCH) if wanted else BATCH  # large inputs: fewer per run
    batches = range(0, len(calib), rows)
    generator = torch.Generator().manual_seed(seed)
    for start in tqdm(batches, desc="layer input Hessians", unit="batch", file=sys.stderr, disable=not progress,
                      leave=False):
        batch = calib[start:start + rows]
        values = dict(zip(wanted, session.run(wanted, {input_name: batch}))) if wanted else {}
        values[input_name] = batch
        for tensor, patch in patches.items():
            columns = _columns(torch.from_numpy(np.ascontiguousarray(values[patch.input])), patch)  # (g, d, n)
            keep = max(1, MAX_COLUMNS // len(batches))
            if columns.shape[2] > keep:
                columns = columns[:, :, torch.randperm(columns.shape[2], generator=generator)[:keep]]
            product = torch.bmm(columns, columns.transpose(1, 2)).double()
            sums[tensor] = sums[tensor] + product if tensor in sums else product
            counts[tensor] += columns.shape[2]
    return {tensor: LayerHessian((sums[tensor] / counts[tensor]).numpy()) for tensor in patches}


def gptq_integers(float_model: onnx.ModelProto, plan: QuantPlan, weights: dict[str, QParams], calib: np.ndarray,
                  threads: int = 1, seed: int = 0, progress: bool = False) -> dict[str, np.ndarray]:
    """The integers of every weight whose input patches `input_hessians` understands, GPTQ-rounded onto its
    parameters' grid (the compact dtype `materialize` stores); the other weights are absent (nearest)."""
    hessians = input_hessians(float_model, plan, calib, threads=threads, seed=seed, progress=progress)
    needed = {init.name: init for init in float_model.graph.initializer if init.name in hessians}
    integers = {}
    for tensor in tqdm(sorted(hessians), desc="gptq rounding", unit="layer", file=sys.stderr, disable=not progress,
                       leave=False):
        spec, params = plan.weights[tensor], weights[tensor]
        rounded = compensated_weight(numpy_helper.to_array(needed[tensor]), spec.axis, params, hessians[tensor])
        integers[tensor] = params.quantize_compact(rounded)
    return integers


def compensated_weight(weight: np.ndarray, axis: int, params: QParams, hessian: LayerHessian) -> np.ndarray:
    """`weight` rounded onto `params`' grid column by column with the error spread by H^-1 (see the module
    docstring); the same shape and dtype as `weight`."""
    import torch  # deferred: torch loads only when this runs (start-up time)

    rows = np.moveaxis(weight, axis, 0)  # (out, ...) whatever the layout: one row per output channel
    shape = rows.shape
    groups = hessian.groups
    matrix = torch.from_numpy(np.ascontiguousarray(rows.reshape(shape[0], -1), dtype=np.float64))
    fan_in = matrix.shape[1]
    work = matrix.reshape(groups, shape[0] // groups, fan_in).clone()  # (g, out/g, d)
    scale = torch.from_numpy(np.asarray(params.scale, np.float64).reshape(-1)).expand(shape[0]).reshape(groups, -1, 1)
    zero = torch.from_numpy(np.asarray(params.zero_point, np.float64).reshape(-1)).expand(shape[0]).reshape(groups, -1, 1)
    low, high = float(params.low), float(params.qtype.qmax)
    upper = _inverse_factor(torch.from_numpy(hessian.matrix))  # (g, d, d): upper Cholesky factor of H^-1
    result = torch.empty_like(work)
    for column in range(fan_in):
        values = work[:, :, column:column + 1]
        rounded = (torch.clamp(torch.round(values / scale) + zero, low, high) - zero) * scale
        result[:, :, column:column + 1] = rounded
        error = (values - rounded) / upper[:, column, column].reshape(groups, 1, 1)
        work[:, :, column + 1:] -= error * upper[:, column:column + 1, column + 1:]
    out = result.reshape(shape).numpy().astype(weight.dtype)
    return np.moveaxis(out, 0, axis)


def _inverse_factor(hessian):
    """The upper Cholesky factor of (H + damping)^-1 per group, inputs that never fire made harmless."""
    import torch  # deferred: torch loads only when this runs (start-up time)

    hessian = hessian.clone()
    diagonal = torch.diagonal(hessian, dim1=1, dim2=2)
    dead = diagonal <= 0
    diagonal[dead] = 1.0  # an input that is always zero: its weights' rounding costs nothing, any value works
    damp = DAMPING * diagonal.mean(dim=1, keepdim=True)
    diagonal += damp
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    return torch.linalg.cholesky(inverse, upper=True)


def _patches(node: onnx.NodeProto, weight: onnx.TensorProto) -> _Patches | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        if len(weight.dims) != 4 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return None  # 1-D/3-D convolutions and implicit padding: rounded to nearest instead
        top, left, bottom, right = attrs.get("pads", (0, 0, 0, 0))
        return _Patches(node.input[0], "conv", (int(weight.dims[2]), int(weight.dims[3])),
                        tuple(attrs.get("strides", (1, 1))), tuple(attrs.get("dilations", (1, 1))),
                        (left, right, top, bottom), int(attrs.get("group", 1)))
    if node.op_type == "Gemm" and not attrs.get("transA", 0):
        return _Patches(node.input[0], "dense")
    if node.op_type == "MatMul" and len(weight.dims) == 2:
        return _Patches(node.input[0], "dense")
    return None


def _columns(values, patch: _Patches):
    """The input as (groups, fan_in, positions): each column one patch a weight row multiplies, in the order
    of the row's (input channel, kernel row, kernel column) elements."""
    import torch.nn.functional as F  # deferred: torch loads only when this runs (start-up time)

    if patch.kind == "dense":
        flat = values.reshape(-1, values.shape[-1]).float()
        return flat.t().unsqueeze(0)
    padded = F.pad(values.float(), patch.pads)
    unfolded = F.unfold(padded, patch.kernel, dilation=patch.dilations, stride=patch.strides)  # (N, C*k*k, L)
    batch, rows, positions = unfolded.shape
    grouped = unfolded.reshape(batch, patch.groups, rows // patch.groups, positions)
    return grouped.permute(1, 2, 0, 3).reshape(patch.groups, rows // patch.groups, batch * positions)
