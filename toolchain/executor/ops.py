"""Torch kernels for the ONNX ops the executor runs, one builder per op type (see registry.py).

Usage:
    from toolchain.executor.ops import constant_value, torch_dtype   # the registry is filled on import
    from toolchain.executor.registry import supported_ops
    supported_ops()   # ['Add', 'AveragePool', 'BatchNormalization', 'Cast', 'Clip', ...]

Builders decide at construction everything that does not depend on the input's shape (padding layout,
fast paths such as F.linear for nn.Linear-style Gemm or F.hardtanh for ReLU6-style Clip), so that the
kernels are direct calls into torch.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import torch
from torch.nn import functional as F

from toolchain.executor.registry import Builder, Kernel, NodeContext, register

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


# --------------------------------------------------------------------------------------------- helpers


def _nd_fn(rank: int, name: str) -> Callable[..., torch.Tensor]:
    """F.conv1d/2d/3d, F.max_pool1d/2d/3d, ... for a kernel with `rank` spatial dims."""
    return getattr(F, f"{name}{rank}d")


def _torch_pads(onnx_pads: Sequence[int]) -> tuple[int, ...]:
    """ONNX [b1, b2, ..., e1, e2, ...] over the last len/2 dims -> F.pad's (last_b, last_e, ...), trailing zeros cut."""
    half = len(onnx_pads) // 2
    pairs = [(onnx_pads[i], onnx_pads[i + half]) for i in reversed(range(half))]
    while pairs and pairs[-1] == (0, 0):  # F.pad is cheaper with fewer dims to visit
        pairs.pop()
    return tuple(v for pair in pairs for v in pair)


def _same_pads(x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
               upper: bool) -> list[int]:
    """ONNX auto_pad SAME_UPPER/SAME_LOWER pads for the spatial dims of `x` (known only at run time)."""
    begins, ends = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins + ends


def _spatial_padding(ctx: NodeContext, rank: int) -> tuple[str, list[int]]:
    """('explicit', pads) or ('same_upper'/'same_lower', []) from auto_pad and pads."""
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = list(ctx.attr("pads", [0] * (2 * rank)))
        if len(pads) != 2 * rank:
            raise ctx.error(f"pads has {len(pads)} values for {rank} spatial dims; give 2 per dim")
        return "explicit", pads
    if auto_pad == "VALID":
        return "explicit", [0] * (2 * rank)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return auto_pad.lower(), []
    raise ctx.error(f"auto_pad={auto_pad!r} is not an ONNX value; use NOTSET, VALID, SAME_UPPER or SAME_LOWER")


def _scalar(value: np.ndarray) -> float:
    """A one-element array (shape () or (1,), as exporters write bounds) as a Python float."""
    return float(np.asarray(value).reshape(-1)[0])


def _normalise_axes(axes: Sequence[int], rank: int) -> list[int]:
    return [a + rank if a < 0 else a for a in axes]


# ------------------------------------------------------------------------------------------ convolution


@register("Conv")
def _conv(ctx: NodeContext) -> Kernel:
    kernel_shape = ctx.attr("kernel_shape")
    if kernel_shape is not None:
        return _conv_kernel(ctx, len(kernel_shape))
    # kernel_shape is optional in ONNX (implied by the weight): pick the kernel on the first call.
    by_rank: dict[int, Kernel] = {}

    def conv_any_rank(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        rank = w.dim() - 2
        if rank not in by_rank:
            by_rank[rank] = _conv_kernel(ctx, rank)
        return by_rank[rank](x, w, b)

    return conv_any_rank


def _conv_kernel(ctx: NodeContext, rank: int) -> Kernel:
    if rank not in (1, 2, 3):
        raise ctx.error(f"{rank}-D convolution is not supported; only 1-D, 2-D and 3-D")
    conv = _nd_fn(rank, "conv")
    strides = tuple(ctx.attr("strides", [1] * rank))
    dilations = tuple(ctx.attr("dilations", [1] * rank))
    groups = int(ctx.attr("group", 1))
    mode, pads = _spatial_padding(ctx, rank)
    if mode != "explicit":
        upper = mode == "same_upper"

        def same_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            x = F.pad(x, _torch_pads(_same_pads(x, w.shape[2:], strides, dilations, upper)))
            return conv(x, w, b, strides, 0, dilations, groups)

        return same_conv
    if pads[:rank] == pads[rank:]:
        padding = tuple(pads[:rank])
        return lambda x, w, b=None: conv(x, w, b, strides, padding, dilations, groups)
    # Asymmetric pads: torch convolutions only take symmetric padding, so pad first.
    torch_pads = _torch_pads(pads)
    return lambda x, w, b=None: conv(F.pad(x, torch_pads), w, b, strides, 0, dilations, groups)


@register("BatchNormalization", static=(3, 4))
def _batch_norm(ctx: NodeContext) -> Kernel:
    if ctx.attr("training_mode", 0):
        raise ctx.error("training_mode=1 (batch statistics); export the model in eval mode (training_mode=0)")
    if ctx.num_outputs > 1:
        raise ctx.error("running-statistics outputs are only produced in training mode; export in eval mode")
    eps = float(ctx.attr("epsilon", 1e-5))
    # Running statistics (inputs 3, 4) are passed as tensors, not baked: they are live buffers that
    # data generation reads and that the caller may update.
    return lambda x, scale, bias, mean, var: F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)


@register("Gemm")
def _gemm(ctx: NodeContext) -> Kernel:
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    trans_a, trans_b = bool(ctx.attr("transA", 0)), bool(ctx.attr("transB", 0))
    if not trans_a and trans_b and alpha == 1.0 and beta == 1.0:
        return lambda a, b, c=None: F.linear(a, b, c)  # the nn.Linear layout: one fused call

    def gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        a = a.t() if trans_a else a
        b = b.t() if trans_b else b
        if c is None:
            return a @ b if alpha == 1.0 else torch.mm(a, b) * alpha
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)

    return gemm


@register("MatMul")
def _matmul(ctx: NodeContext) -> Kernel:
    return torch.matmul


# ---------------------------------------------------------------------------------------- element-wise


@register("Relu")
def _relu(ctx: NodeContext) -> Kernel:
    return torch.relu


@register("Sigmoid")
def _sigmoid(ctx: NodeContext) -> Kernel:
    return torch.sigmoid


@register("Clip", static=(1, 2))
def _clip(ctx: NodeContext) -> Kernel:
    if ctx.opset < 11:  # bounds were attributes before opset 11
        low, high = ctx.attr("min"), ctx.attr("max")
    else:
        dynamic = [i for i in (1, 2) if ctx.has_input(i) and ctx.const(i) is None]
        if dynamic:
            return lambda x, low=None, high=None: torch.clamp(x, low, high)
        low = _scalar(ctx.const(1)) if ctx.has_input(1) else None
        high = _scalar(ctx.const(2)) if ctx.has_input(2) else None
    if low is not None and high is not None and low <= high:
        return lambda x, *_: F.hardtanh(x, low, high)  # what nn.ReLU6 runs: same kernel, same gradient
    if low is None and high is None:
        return lambda x, *_: x
    return lambda x, *_: torch.clamp(x, low, high)


def _binary(fn: Callable[[Any, Any], torch.Tensor]) -> Builder:
    return lambda ctx: fn


register("Add")(_binary(operator.add))
register("Sub")(_binary(operator.sub))
register("Mul")(_binary(operator.mul))


@register("Div")
def _div(ctx: NodeContext) -> Kernel:
    def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # ONNX integer Div truncates; torch's `/` would return floats.
        return a / b if a.is_floating_point() else torch.div(a, b, rounding_mode="trunc")

    return div


@register("Identity")
def _identity(ctx: NodeContext) -> Kernel:
    return lambda x: x


@register("Dropout", static=(1, 2))
def _dropout(ctx: NodeContext) -> Kernel:
    # Inference: the output is the input; the optional mask output is all True.
    if ctx.num_outputs > 1:
        return lambda x, *_: (x, torch.ones_like(x, dtype=torch.bool))
    return lambda x, *_: x


@register("Softmax")
def _softmax(ctx: NodeContext) -> Kernel:
    if ctx.opset >= 13:
        axis = int(ctx.attr("axis", -1))
        return lambda x: F.softmax(x, axis)
    # Before opset 13, Softmax flattened the input to 2-D at `axis` and normalised over the second dim.
    axis = int(ctx.attr("axis", 1))

    def softmax_2d(x: torch.Tensor) -> torch.Tensor:
        a = axis + x.dim() if axis < 0 else axis
        return F.softmax(x.reshape(math.prod(x.shape[:a]), -1), 1).reshape(x.shape)

    return softmax_2d


# --------------------------------------------------------------------------------------------- pooling


def _pool_geometry(ctx: NodeContext) -> tuple[int, list[int], list[int], list[int], str, list[int]]:
    kernel = list(ctx.attr("kernel_shape", []))
    if not kernel:
        raise ctx.error("kernel_shape attribute is missing; ONNX requires it")
    rank = len(kernel)
    if rank not in (1, 2, 3):
        raise ctx.error(f"{rank}-D pooling is not supported; only 1-D, 2-D and 3-D")
    strides = list(ctx.attr("strides", [1] * rank))
    dilations = list(ctx.attr("dilations", [1] * rank))
    mode, pads = _spatial_padding(ctx, rank)
    return rank, kernel, strides, dilations, mode, pads


@register("MaxPool")
def _max_pool(ctx: NodeContext) -> Kernel:
    if ctx.num_outputs > 1:
        raise ctx.error("the Indices output is not supported; remove it (only the pooled values are used)")
    if ctx.attr("storage_order", 0):
        raise ctx.error("storage_order=1 only affects the Indices output, which is not supported; remove it")
    rank, kernel, strides, dilations, mode, pads = _pool_geometry(ctx)
    pool = _nd_fn(rank, "max_pool")
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    if mode != "explicit":
        upper = mode == "same_upper"
        return lambda x: pool(F.pad(x, _torch_pads(_same_pads(x, kernel, strides, dilations, upper)), value=-math.inf),
                              kernel, strides, 0, dilations, ceil_mode)
    begin, end = pads[:rank], pads[rank:]
    if begin == end and all(p <= k // 2 for p, k in zip(begin, kernel)):
        return lambda x: pool(x, kernel, strides, begin, dilations, ceil_mode)
    # torch pools pad symmetrically and by at most half a kernel: pad with -inf, which max ignores.
    torch_pads = _torch_pads(pads)
    return lambda x: pool(F.pad(x, torch_pads, value=-math.inf), kernel, strides, 0, dilations, ceil_mode)


@register("AveragePool")
def _average_pool(ctx: NodeContext) -> Kernel:
    rank, kernel, strides, dilations, mode, pads = _pool_geometry(ctx)
    if any(d != 1 for d in dilations):
        raise ctx.error(f"dilations={dilations} is not supported for AveragePool; only 1")
    pool = _nd_fn(rank, "avg_pool")
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    count_pad = bool(ctx.attr("count_include_pad", 0))
    if mode == "explicit" and pads[:rank] == pads[rank:] and all(p <= k // 2 for p, k in zip(pads, kernel)):
        padding = pads[:rank]
        return lambda x: pool(x, kernel, strides, padding, ceil_mode, count_pad)
    upper = mode == "same_upper"

    def padded_pool(x: torch.Tensor) -> torch.Tensor:
        spatial = _same_pads(x, kernel, strides, dilations, upper) if mode != "explicit" else pads
        torch_pads = _torch_pads(spatial)
        summed = pool(F.pad(x, torch_pads), kernel, strides, 0, ceil_mode, True)
        if count_pad:
            return summed
        # Divide by the number of real (unpadded) elements under each window.
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        return summed / pool(F.pad(ones, torch_pads), kernel, strides, 0, ceil_mode, True)

    return padded_pool


@register("GlobalAveragePool")
def _global_average_pool(ctx: NodeContext) -> Kernel:
    def global_average_pool(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return F.adaptive_avg_pool2d(x, 1)  # what the zoo modules run
        return x.mean(tuple(range(2, x.dim())), keepdim=True)

    return global_average_pool


@register("GlobalMaxPool")
def _global_max_pool(ctx: NodeContext) -> Kernel:
    return lambda x: x.amax(tuple(range(2, x.dim())), keepdim=True)


@register("ReduceMean", static=(1,))
def _reduce_mean(ctx: NodeContext) -> Kernel:
    keepdims = bool(ctx.attr("keepdims", 1))
    if ctx.opset < 18:
        axes = ctx.attr("axes")
    elif ctx.has_input(1):
        axes = ctx.const_ints(1)
        if axes is None:
            return lambda x, a: x.mean(tuple(a.tolist()), keepdim=keepdims)
    else:
        axes = None
    if axes is None or len(axes) == 0:
        if ctx.attr("noop_with_empty_axes", 0):
            return lambda x, *_: x
        return lambda x, *_: x.mean(tuple(range(x.dim())), keepdim=keepdims)
    dims = tuple(axes)
    return lambda x, *_: x.mean(dims, keepdim=keepdims)


# ------------------------------------------------------------------------------------ shape and layout


@register("Flatten")
def _flatten(ctx: NodeContext) -> Kernel:
    axis = int(ctx.attr("axis", 1))
    if axis == 1:
        return lambda x: x.flatten(1) if x.dim() > 1 else x.reshape(1, -1)

    def flatten(x: torch.Tensor) -> torch.Tensor:
        a = axis + x.dim() if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))

    return flatten


def _resolve_shape(x: torch.Tensor, shape: Sequence[int], allowzero: bool) -> list[int]:
    """ONNX Reshape target: 0 copies the input's dim (unless allowzero), -1 is left for torch to infer."""
    if allowzero:
        return list(shape)
    return [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]


@register("Reshape", static=(1,))
def _reshape(ctx: NodeContext) -> Kernel:
    allowzero = bool(ctx.attr("allowzero", 0))
    shape = ctx.const_ints(1)
    if shape is None:
        return lambda x, s: x.reshape(_resolve_shape(x, s.tolist(), allowzero))
    if allowzero or 0 not in shape:
        fixed = tuple(shape)
        return lambda x, *_: x.reshape(fixed)
    return lambda x, *_: x.reshape(_resolve_shape(x, shape, allowzero))


@register("Transpose")
def _transpose(ctx: NodeContext) -> Kernel:
    perm = ctx.attr("perm")
    if perm is None:
        return lambda x: x.permute(tuple(reversed(range(x.dim()))))
    dims = tuple(perm)
    return lambda x: x.permute(dims)


def _axes_input_or_attr(ctx: NodeContext, index: int, since: int) -> tuple[list[int] | None, bool]:
    """(axes, known): axes from the attribute (before opset `since`) or from input `index`."""
    if ctx.opset < since:
        return ctx.attr("axes"), True
    if not ctx.has_input(index):
        return None, True
    axes = ctx.const_ints(index)
    return axes, axes is not None


@register("Squeeze", static=(1,))
def _squeeze(ctx: NodeContext) -> Kernel:
    axes, known = _axes_input_or_attr(ctx, 1, since=13)
    if not known:
        return lambda x, a: x.squeeze(tuple(a.tolist()))
    if axes is None:
        return lambda x, *_: x.squeeze()
    dims = tuple(axes)
    return lambda x, *_: x.squeeze(dims)


def _unsqueeze_to(x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    for axis in sorted(_normalise_axes(axes, x.dim() + len(axes))):
        x = x.unsqueeze(axis)
    return x


@register("Unsqueeze", static=(1,))
def _unsqueeze(ctx: NodeContext) -> Kernel:
    axes, known = _axes_input_or_attr(ctx, 1, since=13)
    if not known:
        return lambda x, a: _unsqueeze_to(x, a.tolist())
    if axes is None:
        raise ctx.error("no axes given; Unsqueeze needs the axes to insert")
    if all(a >= 0 for a in axes):
        dims = sorted(axes)
        if len(dims) == 1:
            dim = dims[0]
            return lambda x, *_: x.unsqueeze(dim)
    return lambda x, *_: _unsqueeze_to(x, axes)


@register("Concat")
def _concat(ctx: NodeContext) -> Kernel:
    axis = int(ctx.attr("axis"))
    return lambda *xs: torch.cat(xs, axis)


def _slice_index(rank: int | None, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int] | None,
                 steps: Sequence[int] | None) -> tuple[slice, ...]:
    """Python index tuple for ONNX Slice; positive steps only. Out-of-range ends clamp, as in Python."""
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    axes = _normalise_axes(axes, rank) if rank is not None else list(axes)
    index = [slice(None)] * (max(axes) + 1 if axes else 0)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        # INT64 max/min mean "to the end"; None avoids torch handling huge Python ints.
        stop = None if end >= INT64_MAX or (end <= INT64_MIN) else end
        index[axis] = slice(start, stop, step)
    return tuple(index)


@register("Slice", static=(1, 2, 3, 4))
def _slice(ctx: NodeContext) -> Kernel:
    if ctx.opset < 10:
        raise ctx.error(f"opset {ctx.opset} Slice (attributes) is not supported; use opset >= 10")
    values = [ctx.const_ints(i) if ctx.has_input(i) else None for i in range(1, 5)]
    known = all(v is not None or not ctx.has_input(i + 1) for i, v in enumerate(values))
    if not known:

        def dynamic_slice(x: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
                          axes: torch.Tensor | None = None, steps: torch.Tensor | None = None) -> torch.Tensor:
            steps_list = None if steps is None else steps.tolist()
            if steps_list is not None and any(s < 0 for s in steps_list):
                raise ctx.error("negative steps are not supported; reverse with a positive-step Slice and Flip")
            axes_list = None if axes is None else axes.tolist()
            return x[_slice_index(x.dim(), starts.tolist(), ends.tolist(), axes_list, steps_list)]

        return dynamic_slice
    starts, ends, axes, steps = values
    if steps is not None and any(s <= 0 for s in steps):
        raise ctx.error(f"steps={steps}: only positive steps are supported")
    if axes is None or all(a >= 0 for a in axes):
        index = _slice_index(None, starts, ends, axes, steps)
        return lambda x, *_: x[index]
    return lambda x, *_: x[_slice_index(x.dim(), starts, ends, axes, steps)]


@register("Pad", static=(1, 2, 3))
def _pad(ctx: NodeContext) -> Kernel:
    mode = ctx.attr("mode", "constant")
    if mode != "constant":
        raise ctx.error(f"mode={mode!r} is not supported; only mode='constant' is")
    if ctx.opset < 11:
        pads, value, axes = ctx.attr("pads"), float(ctx.attr("value", 0.0)), None
    else:
        pads, axes = ctx.const_ints(1), ctx.const_ints(3) if ctx.has_input(3) else None
        value = _scalar(ctx.const(2)) if ctx.has_input(2) and ctx.const(2) is not None else 0.0
        if pads is None or (ctx.has_input(2) and ctx.const(2) is None) or (ctx.has_input(3) and axes is None):
            return _dynamic_pad

    if axes is None:
        torch_pads = _torch_pads(pads)
        return lambda x, *_: F.pad(x, torch_pads, value=value)
    return lambda x, *_: F.pad(x, _torch_pads(_full_pads(x.dim(), pads, axes)), value=value)


def _full_pads(rank: int, pads: Sequence[int], axes: Sequence[int]) -> list[int]:
    """Pads given for `axes` only -> ONNX pads over every dim."""
    full = [0] * (2 * rank)
    for i, axis in enumerate(_normalise_axes(axes, rank)):
        full[axis], full[axis + rank] = pads[i], pads[i + len(axes)]
    return full


def _dynamic_pad(x: torch.Tensor, pads: torch.Tensor, value: torch.Tensor | None = None,
                 axes: torch.Tensor | None = None) -> torch.Tensor:
    pad_list = pads.tolist()
    if axes is not None:
        pad_list = _full_pads(x.dim(), pad_list, axes.tolist())
    return F.pad(x, _torch_pads(pad_list), value=0.0 if value is None else float(value))


# ----------------------------------------------------------------------------------------- quantization
#
# QDQ graphs run as fake quantization. QuantizeLinear returns its integers as float32 values (exact up
# to 2**24), so that gradients flow through it and through the integer-domain ops after it (Pad, Slice,
# MaxPool, Reshape, ...): torch integer tensors cannot carry gradients. Rounding is torch.round (half to
# even, as ONNX) with a straight-through gradient; the clamp to [qmin, qmax] comes after the rounding (as
# in QDrop) and passes no gradient outside the range. x / scale is a true float division, as onnxruntime
# computes it; its gradient reaches a trainable scale (LSQ: d round(x/s) / ds taken as -x/s**2). Zero
# points are static: read at construction (their ONNX type fixes [qmin, qmax]; a per-tensor or all-zero
# one is baked in), so rebuild the module after changing one. Scales are live inputs (trainable
# parameters under trainable=True), reshaped per call for per-axis broadcasting.

# INT4/INT2 initializers are held as int8, UINT4/UINT2 as uint8 (numpy_helper gives ml_dtypes arrays).
SUB_BYTE_HOLDERS: dict[np.dtype, type] = {
    np.dtype(ml_dtypes.int4): np.int8,
    np.dtype(ml_dtypes.int2): np.int8,
    np.dtype(ml_dtypes.uint4): np.uint8,
    np.dtype(ml_dtypes.uint2): np.uint8,
}


def integer_range(dtype: Any) -> tuple[int, int] | None:
    """[qmin, qmax] of a numpy integer dtype (ml_dtypes int4/uint4/int2/uint2 included); None for non-integers."""
    dtype = np.dtype(dtype)
    if dtype in SUB_BYTE_HOLDERS:
        info = ml_dtypes.iinfo(dtype)
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
    else:
        return None
    return int(info.min), int(info.max)


def _onnx_type_name(dtype: Any) -> str:
    try:
        return onnx.TensorProto.DataType.Name(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    except (KeyError, TypeError, ValueError):
        return str(dtype)


def _axis_view(axis: int, rank: int) -> tuple[int, ...] | None:
    """Shape that broadcasts a 1-D per-axis tensor along `axis` of a rank-`rank` tensor; None: already does."""
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < rank:
        raise ValueError(f"axis {axis} is out of range for a rank-{rank} input")
    return None if a == rank - 1 else (-1,) + (1,) * (rank - 1 - a)


Broadcast = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (per-axis tensor, x) -> broadcastable view


def _per_axis_broadcast(ctx: NodeContext, axis: int, index: int) -> Broadcast | None:
    """How to broadcast input `index` (scale or zero point) against x (input 0): None when it needs no
    reshape (per tensor, or per axis along the last dim), decided at construction when shapes are known."""
    shape, x_shape = ctx.shape(index), ctx.shape(0)
    if shape is not None and (len(shape) == 0 or math.prod(shape) == 1):
        return None  # per tensor: a scalar or a one-element vector (onnxruntime treats both as per tensor)
    if shape is not None and len(shape) != 1:
        raise ctx.error(f"input {index} has shape {list(shape)}; per-axis scales and zero points are 1-D "
                        "(block quantization, block_size > 0, is not supported)")
    if x_shape is not None:
        try:
            view = _axis_view(axis, len(x_shape))
        except ValueError as err:
            raise ctx.error(str(err)) from None
        if shape is not None and x_shape[axis] != shape[0]:
            raise ctx.error(f"input {index} has {shape[0]} values for axis {axis} of size {x_shape[axis]}")
        if view is None:
            return None
        return lambda t, x: t.reshape(view)
    views: dict[int, tuple[int, ...] | None] = {}  # by the rank of x, known only when called

    def broadcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0 or t.numel() == 1:
            return t
        rank = x.dim()
        if rank not in views:
            views[rank] = _axis_view(axis, rank)
        view = views[rank]
        return t if view is None else t.reshape(view)

    return broadcast


def _zero_point(ctx: NodeContext) -> tuple[np.ndarray | None, int, bool]:
    """(zero point array or None when absent, its value when it is one number, whether it is all zeros)."""
    if not ctx.has_input(2):
        return None, 0, True
    zero = ctx.const(2)
    if zero is None:
        raise ctx.error(f"zero point '{ctx.inputs[2]}' is computed at run time; it must be an initializer or a "
                        "Constant (its type fixes the integer range)")
    zero = np.asarray(zero)
    if integer_range(zero.dtype) is None:
        raise ctx.error(f"zero point of type {_onnx_type_name(zero.dtype)} is not supported; only integer types "
                        "(INT2/UINT2/INT4/UINT4/INT8/UINT8/INT16/UINT16/INT32)")
    values = zero.astype(np.int64).reshape(-1)
    return zero, int(values[0]) if values.size == 1 else 0, bool(np.all(values == 0))


def _check_block_size(ctx: NodeContext) -> None:
    if ctx.opset >= 21 and int(ctx.attr("block_size", 0)):
        raise ctx.error(f"block_size={ctx.attr('block_size')} (blocked quantization) is not supported; use per-tensor "
                        "or per-axis scales")


class _RoundClamp(torch.autograd.Function):
    """clamp(round(v) + offset, lo, hi), round half to even, with the straight-through gradient: the
    incoming gradient where round(v) + offset lies in [lo, hi] (bounds included), 0 elsewhere (as QDrop's
    fake quantizer; one autograd node instead of a round/detach/add/clamp chain: ~1.3x faster)."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, offset: Any, lo: int, hi: int) -> torch.Tensor:
        r = torch.round(v)
        if offset is not None:
            # A number, or a per-axis tensor already shaped to broadcast (in place only when r keeps its shape).
            r = r.add_(offset) if isinstance(offset, (int, float)) else r + offset
        y = r.clamp(lo, hi)
        ctx.save_for_backward(y.eq(r))  # inside the range (False for NaN)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, 0.0), None, None, None  # not grad * inside: no bool -> float copy


@register("QuantizeLinear", static=(2,))
def _quantize_linear(ctx: NodeContext) -> Kernel:
    _check_block_size(ctx)
    axis = int(ctx.attr("axis", 1))
    zero, z, zero_is_zero = _zero_point(ctx)
    output_dtype = int(ctx.attr("output_dtype", 0)) if ctx.opset >= 21 else 0
    if output_dtype:
        try:
            declared = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(output_dtype))
        except (KeyError, TypeError, ValueError):
            raise ctx.error(f"output_dtype={output_dtype} is not an ONNX tensor type") from None
    else:
        declared = np.dtype(np.uint8)  # the spec's default when there is no zero point
    if zero is not None:
        if output_dtype and declared != zero.dtype:
            raise ctx.error(f"output_dtype {_onnx_type_name(declared)} differs from the zero point's type "
                            f"{_onnx_type_name(zero.dtype)}; ONNX requires them to match")
        declared = zero.dtype
    bounds = integer_range(declared)
    if bounds is None:
        raise ctx.error(f"quantizing to {_onnx_type_name(declared)} is not supported; only integer types")
    lo, hi = bounds
    precision = int(ctx.attr("precision", 0)) if ctx.opset >= 23 else 0
    compute = torch_dtype(precision) if precision else None
    if precision and (compute is None or not compute.is_floating_point):
        raise ctx.error(f"precision={precision} is not a supported float type")
    scale_view = _per_axis_broadcast(ctx, axis, 1)
    zero_view = None if zero_is_zero or zero is None or zero.size == 1 else _per_axis_broadcast(ctx, axis, 2)
    per_axis_zero = not zero_is_zero and zero is not None and zero.size > 1

    if scale_view is None and not per_axis_zero and compute is None:  # per tensor: the activations

        offset = z or None

        def quantize(x: torch.Tensor, s: torch.Tensor, zp: torch.Tensor | None = None) -> torch.Tensor:
            v = x / s  # a true division, as onnxruntime computes it (x * (1 / s) differs in the last bit)
            if v.requires_grad:
                return _RoundClamp.apply(v, offset, lo, hi)
            v = v.round_()  # v is a fresh tensor outside autograd: work in place
            if z:
                v = v.add_(z)
            return v.clamp_(lo, hi)

        return quantize

    def quantize_per_axis(x: torch.Tensor, s: torch.Tensor, zp: torch.Tensor | None = None) -> torch.Tensor:
        if compute is not None:
            x, s = x.to(compute), s.to(compute)
        v = x / (s if scale_view is None else scale_view(s, x))
        if per_axis_zero:
            offset = zp if zero_view is None else zero_view(zp, x)
        else:
            offset = z or None
        if v.requires_grad:
            return _RoundClamp.apply(v, offset, lo, hi)
        v = v.round_()
        if offset is not None:
            v = v + offset
        return v.clamp_(lo, hi)

    return quantize_per_axis


@register("DequantizeLinear", static=(2,))
def _dequantize_linear(ctx: NodeContext) -> Kernel:
    _check_block_size(ctx)
    axis = int(ctx.attr("axis", 1))
    zero, z, zero_is_zero = _zero_point(ctx)
    output_dtype = int(ctx.attr("output_dtype", 0)) if ctx.opset >= 23 else 0
    cast = torch_dtype(output_dtype) if output_dtype else None
    if output_dtype and (cast is None or not cast.is_floating_point):
        raise ctx.error(f"output_dtype={output_dtype} is not a supported float type")
    scale_view = _per_axis_broadcast(ctx, axis, 1)
    per_axis_zero = not zero_is_zero and zero is not None and zero.size > 1
    zero_view = _per_axis_broadcast(ctx, axis, 2) if per_axis_zero else None

    # x is float (a QuantizeLinear output, or a learned rounding put in place of the integers) or an
    # integer tensor (an initializer): x * s promotes it to the scale's type, float(x) * s as onnxruntime.
    if zero_is_zero and cast is None:
        if scale_view is None:
            return lambda x, s, zp=None: x * s
        return lambda x, s, zp=None: x * scale_view(s, x)

    def dequantize(x: torch.Tensor, s: torch.Tensor, zp: torch.Tensor | None = None) -> torch.Tensor:
        if not zero_is_zero:
            offset = (zp if zero_view is None else zero_view(zp, x)) if per_axis_zero else z
            # Integers subtract in int32, as onnxruntime does (uint8 - zp must not wrap around).
            x = x - offset if x.is_floating_point() else x.to(torch.int32) - offset
        y = x * (s if scale_view is None else scale_view(s, x))
        return y if cast is None else y.to(cast)

    return dequantize


# --------------------------------------------------------------------------------- constants and shapes

_TORCH_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.BOOL: torch.bool,
}


def torch_dtype(onnx_type: int) -> torch.dtype | None:
    return _TORCH_DTYPES.get(onnx_type)


@register("Cast")
def _cast(ctx: NodeContext) -> Kernel:
    target = ctx.attr("to")
    dtype = torch_dtype(target)
    if dtype is None:
        name = onnx.TensorProto.DataType.Name(target) if target in onnx.TensorProto.DataType.values() else target
        raise ctx.error(f"Cast to {name} is not supported; supported: {sorted(onnx.TensorProto.DataType.Name(t) for t in _TORCH_DTYPES)}")
    return lambda x: x.to(dtype)


@register("Constant")
def _constant(ctx: NodeContext) -> Kernel:
    # OnnxModule turns Constant nodes into buffers at construction; this only serves direct use.
    value = torch.from_numpy(np.array(constant_value(ctx)))
    return lambda: value


def constant_value(ctx: NodeContext) -> np.ndarray:
    """The value of a Constant node, from whichever value* attribute it has."""
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in ctx.attrs:
            return np.array(ctx.attrs[key], dtype=dtype)
    if "value" in ctx.attrs:
        return np.array(ctx.attrs["value"])
    raise ctx.error(f"attributes {sorted(ctx.attrs)} are not supported; use value, value_float(s) or value_int(s)")


@register("Shape")
def _shape(ctx: NodeContext) -> Kernel:
    start, end = ctx.attr("start", 0), ctx.attr("end")
    return lambda x: torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device)


@register("Gather", static=(1,))
def _gather(ctx: NodeContext) -> Kernel:
    axis = int(ctx.attr("axis", 0))
    indices = ctx.const(1)
    if indices is not None and indices.ndim == 0:
        index = int(indices)
        return lambda x, *_: x.select(axis, index)  # a scalar index drops the axis, as in ONNX

    def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        a = axis + x.dim() if axis < 0 else axis
        idx = torch.where(idx < 0, idx + x.shape[a], idx)  # ONNX allows negative indices
        flat = x.index_select(a, idx.reshape(-1))
        return flat.reshape(*x.shape[:a], *idx.shape, *x.shape[a + 1:])

    return gather
