"""Kernels of the layers with weights and of the normalisations: Conv, Gemm, MatMul, BatchNormalization, LayerNormalization."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from toolchain.executor.ops.common import nd_fn, onnx_to_torch_pads, same_pads, spatial_padding
from toolchain.executor.ops.polyphase import stem_conv2d, worth_phases
from toolchain.executor.registry import Kernel, NodeContext, register


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
    strides = tuple(ctx.attr("strides", [1] * rank))
    dilations = tuple(ctx.attr("dilations", [1] * rank))
    groups = int(ctx.attr("group", 1))
    conv = _padded_conv(rank, strides, dilations, groups)
    mode, pads = spatial_padding(ctx, rank)
    if mode != "explicit":
        upper = mode == "same_upper"

        def same_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            x = F.pad(x, onnx_to_torch_pads(same_pads(x, w.shape[2:], strides, dilations, upper)))
            return conv(x, w, b, (0,) * rank)

        return same_conv
    if pads[:rank] == pads[rank:]:
        padding = tuple(pads[:rank])
        return lambda x, w, b=None: conv(x, w, b, padding)
    # Asymmetric pads: torch convolutions only take symmetric padding, so pad first.
    torch_pads = onnx_to_torch_pads(pads)
    return lambda x, w, b=None: conv(F.pad(x, torch_pads), w, b, (0,) * rank)


def _padded_conv(rank: int, strides: tuple[int, ...], dilations: tuple[int, ...],
                 groups: int) -> Callable[..., torch.Tensor]:
    """conv(x, w, b, padding) with this node's strides, dilations and groups: torch's, or for a strided 2-D
    stem whose input needs a gradient (images being optimised) and whose kernel pays for it (polyphase.
    worth_phases: 7x7 and 5x5 at stride 2, not 3x3), polyphase.stem_conv2d (the same forward, a 2x faster
    input gradient on ResNet-18's 7x7 stem)."""
    plain = nd_fn(rank, "conv")
    if rank != 2 or groups != 1 or max(strides) == 1 or any(d != 1 for d in dilations):
        return lambda x, w, b, padding: plain(x, w, b, strides, padding, dilations, groups)

    def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, padding: tuple[int, ...]) -> torch.Tensor:
        if x.requires_grad and worth_phases(w, strides):
            return stem_conv2d(x, w, b, strides, padding)  # type: ignore[arg-type]  # 2-D: worth_phases checked the rank
        return plain(x, w, b, strides, padding, dilations, groups)

    return conv2d


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




@register("LayerNormalization")
def _layer_norm(ctx: NodeContext) -> Kernel:
    axis = int(ctx.attr("axis", -1))
    eps = float(ctx.attr("epsilon", 1e-5))
    if ctx.num_outputs > 1:
        raise ctx.error("the Mean and InvStdDev outputs are training outputs and are not supported; remove them")

    def layer_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        a = axis + x.dim() if axis < 0 else axis
        normalized = tuple(x.shape[a:])
        if tuple(scale.shape) == normalized and (bias is None or tuple(bias.shape) == normalized):
            return F.layer_norm(x, normalized, scale, bias, eps)  # what nn.LayerNorm runs
        # Scale and bias only broadcast onto the normalised dims: normalise, then apply them.
        y = F.layer_norm(x, normalized, None, None, eps) * scale
        return y if bias is None else y + bias

    return layer_norm
