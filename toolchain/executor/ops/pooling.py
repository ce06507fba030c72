"""Kernels of pooling and reductions: MaxPool, AveragePool, global pools, ReduceMean/Sum/Max/Min."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from toolchain.executor.ops.common import nd_fn, onnx_to_torch_pads, same_pads, spatial_padding
from toolchain.executor.registry import Builder, Kernel, NodeContext, register


def _pool_geometry(ctx: NodeContext) -> tuple[int, list[int], list[int], list[int], str, list[int]]:
    kernel = list(ctx.attr("kernel_shape", []))
    if not kernel:
        raise ctx.error("kernel_shape attribute is missing; ONNX requires it")
    rank = len(kernel)
    if rank not in (1, 2, 3):
        raise ctx.error(f"{rank}-D pooling is not supported; only 1-D, 2-D and 3-D")
    strides = list(ctx.attr("strides", [1] * rank))
    dilations = list(ctx.attr("dilations", [1] * rank))
    mode, pads = spatial_padding(ctx, rank)
    return rank, kernel, strides, dilations, mode, pads


@register("MaxPool")
def _max_pool(ctx: NodeContext) -> Kernel:
    if ctx.num_outputs > 1:
        raise ctx.error("the Indices output is not supported; remove it (only the pooled values are used)")
    if ctx.attr("storage_order", 0):
        raise ctx.error("storage_order=1 only affects the Indices output, which is not supported; remove it")
    rank, kernel, strides, dilations, mode, pads = _pool_geometry(ctx)
    pool = nd_fn(rank, "max_pool")
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    if mode != "explicit":
        upper = mode == "same_upper"
        return lambda x: pool(F.pad(x, onnx_to_torch_pads(same_pads(x, kernel, strides, dilations, upper)), value=-math.inf),
                              kernel, strides, 0, dilations, ceil_mode)
    begin, end = pads[:rank], pads[rank:]
    if begin == end and all(p <= k // 2 for p, k in zip(begin, kernel)):
        return lambda x: pool(x, kernel, strides, begin, dilations, ceil_mode)
    # torch pools pad symmetrically and by at most half a kernel: pad with -inf, which max ignores.
    torch_pads = onnx_to_torch_pads(pads)
    return lambda x: pool(F.pad(x, torch_pads, value=-math.inf), kernel, strides, 0, dilations, ceil_mode)


@register("AveragePool")
def _average_pool(ctx: NodeContext) -> Kernel:
    rank, kernel, strides, dilations, mode, pads = _pool_geometry(ctx)
    if any(d != 1 for d in dilations):
        raise ctx.error(f"dilations={dilations} is not supported for AveragePool; only 1")
    pool = nd_fn(rank, "avg_pool")
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    count_pad = bool(ctx.attr("count_include_pad", 0))
    if mode == "explicit" and pads[:rank] == pads[rank:] and all(p <= k // 2 for p, k in zip(pads, kernel)):
        padding = pads[:rank]
        return lambda x: pool(x, kernel, strides, padding, ceil_mode, count_pad)
    upper = mode == "same_upper"

    def padded_pool(x: torch.Tensor) -> torch.Tensor:
        spatial = same_pads(x, kernel, strides, dilations, upper) if mode != "explicit" else pads
        torch_pads = onnx_to_torch_pads(spatial)
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


def _reduce_builder(fn) -> Builder:
    """ReduceMean/Sum/Max/Min: axes from the attribute (before opset 18; 13 for ReduceSum) or from input 1."""

    def build(ctx: NodeContext) -> Kernel:
        keepdims = bool(ctx.attr("keepdims", 1))
        axes_as_input_since = 13 if ctx.op_type == "ReduceSum" else 18
        if ctx.opset < axes_as_input_since:
            axes = ctx.attr("axes")
        elif ctx.has_input(1):
            axes = ctx.const_ints(1)
            if axes is None:
                return lambda x, a: fn(x, tuple(a.tolist()), keepdims) if a.numel() else fn(x, tuple(range(x.dim())), keepdims)
        else:
            axes = None
        if axes is None or len(axes) == 0:
            if ctx.attr("noop_with_empty_axes", 0):
                return lambda x, *_: x
            return lambda x, *_: fn(x, tuple(range(x.dim())), keepdims)
        dims = tuple(axes)
        return lambda x, *_: fn(x, dims, keepdims)

    return build


register("ReduceMean", static=(1,))(_reduce_builder(lambda x, dims, keep: x.mean(dims, keepdim=keep)))
register("ReduceSum", static=(1,))(_reduce_builder(lambda x, dims, keep: x.sum(dims, keepdim=keep)))
register("ReduceMax", static=(1,))(_reduce_builder(lambda x, dims, keep: x.amax(dims, keepdim=keep)))
register("ReduceMin", static=(1,))(_reduce_builder(lambda x, dims, keep: x.amin(dims, keepdim=keep)))
