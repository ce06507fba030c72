"""Kernels of activations (element-wise functions of one tensor), Softmax, and pass-through ops (Identity, Dropout)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from toolchain.executor.ops.common import scalar
from toolchain.executor.registry import Builder, Kernel, NodeContext, register


def _fixed(fn) -> Builder:
    """A builder for an op without attributes: the kernel is `fn` itself."""
    return lambda ctx: fn


for _op, _fn in {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
                 "HardSwish": F.hardswish, "Softsign": F.softsign, "Exp": torch.exp, "Log": torch.log,
                 "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal, "Neg": torch.neg, "Abs": torch.abs,
                 "Softplus": F.softplus}.items():
    register(_op)(_fixed(_fn))


@register("HardSigmoid")
def _hard_sigmoid(ctx: NodeContext) -> Kernel:
    alpha, beta = float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5))
    if abs(alpha - 1 / 6) < 1e-7 and beta == 0.5:
        return F.hardsigmoid  # what nn.Hardsigmoid exports: torch's own kernel and gradient
    return lambda x: torch.clamp(x * alpha + beta, 0.0, 1.0)


def _with_alpha(fn, default: float) -> Builder:
    """LeakyRelu / Elu: fn(x, alpha) with the node's alpha attribute (ONNX's default when absent)."""

    def build(ctx: NodeContext) -> Kernel:
        alpha = float(ctx.attr("alpha", default))
        return lambda x: fn(x, alpha)

    return build


register("LeakyRelu")(_with_alpha(F.leaky_relu, 0.01))
register("Elu")(_with_alpha(F.elu, 1.0))


@register("PRelu")
def _prelu(ctx: NodeContext) -> Kernel:
    # The slope broadcasts onto x (ONNX's unidirectional broadcasting); F.prelu wants a 1-D slope on dim 1.
    return lambda x, slope: torch.where(x >= 0, x, x * slope)


@register("Gelu")
def _gelu(ctx: NodeContext) -> Kernel:
    approximate = ctx.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.error(f"approximate={approximate!r} is not an ONNX value; use 'none' or 'tanh'")
    return lambda x: F.gelu(x, approximate=approximate)


@register("Clip", static=(1, 2))
def _clip(ctx: NodeContext) -> Kernel:
    if ctx.opset < 11:  # bounds were attributes before opset 11
        low, high = ctx.attr("min"), ctx.attr("max")
    else:
        dynamic = [i for i in (1, 2) if ctx.has_input(i) and ctx.const(i) is None]
        if dynamic:
            return lambda x, low=None, high=None: torch.clamp(x, low, high)
        given = [ctx.const(i) if ctx.has_input(i) else None for i in (1, 2)]  # constants: not dynamic
        low, high = (scalar(bound) if bound is not None else None for bound in given)
    if low is not None and high is not None and low <= high:
        return lambda x, *_: F.hardtanh(x, low, high)  # what nn.ReLU6 runs: same kernel, same gradient
    if low is None and high is None:
        return lambda x, *_: x
    return lambda x, *_: torch.clamp(x, low, high)


@register("Identity")
def _identity(ctx: NodeContext) -> Kernel:
    return lambda x: x


@register("Dropout", static=(1, 2))
def _dropout(ctx: NodeContext) -> Kernel:
    # Inference: the output is the input; the optional mask output is all True.
    if ctx.num_outputs > 1:
        return lambda x, *_: (x, torch.ones_like(x, dtype=torch.bool))
    return lambda x, *_: x


def _softmax_builder(fn) -> Builder:
    """Softmax / LogSoftmax: over `axis` from opset 13; before, over the input flattened to 2-D at `axis`."""

    def build(ctx: NodeContext) -> Kernel:
        if ctx.opset >= 13:
            axis = int(ctx.attr("axis", -1))
            return lambda x: fn(x, axis)
        axis = int(ctx.attr("axis", 1))

        def flattened(x: torch.Tensor) -> torch.Tensor:
            a = axis + x.dim() if axis < 0 else axis
            return fn(x.reshape(math.prod(x.shape[:a]), -1), 1).reshape(x.shape)

        return flattened

    return build


register("Softmax")(_softmax_builder(F.softmax))
register("LogSoftmax")(_softmax_builder(F.log_softmax))
