"""Kernels of constants and shape arithmetic: Cast, Constant, ConstantOfShape, Shape, Gather, Range."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from toolchain.executor.registry import Kernel, NodeContext, register

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


@register("ConstantOfShape", static=(0,))
def _constant_of_shape(ctx: NodeContext) -> Kernel:
    value = ctx.attr("value")
    fill = torch.from_numpy(np.array(value).reshape(-1)[:1].copy()) if value is not None else torch.zeros(1)
    shape = ctx.const_ints(0)
    if shape is not None:
        return lambda *_: fill.expand(shape).clone()
    return lambda s: fill.to(s.device).expand(s.tolist()).clone()


@register("Range")
def _range(ctx: NodeContext) -> Kernel:
    return lambda start, limit, delta: torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


@register("CastLike")
def _cast_like(ctx: NodeContext) -> Kernel:
    return lambda x, like: x.to(like.dtype)


@register("SplitToSequence", static=(1,))
def _split_to_sequence(ctx: NodeContext) -> Kernel:
    # A sequence is a Python list in the executor's value slots; SequenceAt reads it.
    axis, keepdims = int(ctx.attr("axis", 0)), bool(ctx.attr("keepdims", 1))
    sizes = ctx.const(1) if ctx.has_input(1) else None
    if ctx.has_input(1) and sizes is None:
        return lambda x, s: list(torch.split(x, s.tolist() if s.dim() else int(s), axis))
    if sizes is None:  # one element per index along axis
        return lambda x, *_: [t if keepdims else t.squeeze(axis) for t in torch.split(x, 1, axis)]
    split = [int(v) for v in sizes.reshape(-1)] if sizes.ndim else int(sizes)
    return lambda x, *_: list(torch.split(x, split, axis))


@register("SequenceAt")
def _sequence_at(ctx: NodeContext) -> Kernel:
    return lambda sequence, position: sequence[int(position)]
