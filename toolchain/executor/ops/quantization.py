"""Kernels of QuantizeLinear and DequantizeLinear (fake quantization, straight-through gradients)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import torch

from toolchain.executor.ops.shapes import torch_dtype
from toolchain.executor.registry import Kernel, NodeContext, register

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
        info = np.iinfo(dtype)  # type: ignore[assignment]  # ml_dtypes.iinfo and np.iinfo share min / max
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
        offset: torch.Tensor | int | None = z or None
        if per_axis_zero:
            assert zp is not None, "a per-axis zero point is an input of the node"
            offset = zp if zero_view is None else zero_view(zp, x)
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
            offset: torch.Tensor | int = z
            if per_axis_zero:
                assert zp is not None, "a per-axis zero point is an input of the node"
                offset = zp if zero_view is None else zero_view(zp, x)
            # Integers subtract in int32, as onnxruntime does (uint8 - zp must not wrap around).
            x = x - offset if x.is_floating_point() else x.to(torch.int32) - offset
        y = x * (s if scale_view is None else scale_view(s, x))
        return y if cast is None else y.to(cast)

    return dequantize


