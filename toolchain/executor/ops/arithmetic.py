"""Kernels of element-wise arithmetic, comparison and selection between tensors (numpy broadcasting).

Add/Sub/Mul/Div/Pow carry activations (SE gates, layer scales, GELU written out) as well as int64 shape
arithmetic (channel shuffles, reshapes computed from x.shape), so each kernel keeps ONNX's integer
semantics: Div truncates, Mod follows the divisor's sign unless fmod=1.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch

from toolchain.executor.registry import Builder, Kernel, NodeContext, register


def _fixed(fn: Callable[..., Any]) -> Builder:
    return lambda ctx: fn


_FIXED: dict[str, Callable[..., Any]] = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Equal": torch.eq, "Less": torch.lt,
                 "LessOrEqual": torch.le, "Greater": torch.gt, "GreaterOrEqual": torch.ge, "Not": torch.logical_not,
                 "And": torch.logical_and, "Or": torch.logical_or, "Where": torch.where}
for _op, _fn in _FIXED.items():
    register(_op)(_fixed(_fn))


@register("Div")
def _div(ctx: NodeContext) -> Kernel:
    def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # ONNX integer Div truncates; torch's `/` would return floats.
        return a / b if a.is_floating_point() else torch.div(a, b, rounding_mode="trunc")

    return div


@register("Pow")
def _pow(ctx: NodeContext) -> Kernel:
    def power(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if b.numel() == 1 and b.is_floating_point() and float(b) == 2.0:
            return a * a  # what x ** 2 (a variance) runs in float: exact, and onnxruntime computes it so
        return torch.pow(a, b.to(a.dtype) if a.is_floating_point() else b).to(a.dtype)  # ONNX: the type of a

    return power


@register("Mod")
def _mod(ctx: NodeContext) -> Kernel:
    if int(ctx.attr("fmod", 0)):
        return torch.fmod  # the sign of the dividend, as C's fmod
    return torch.remainder  # the sign of the divisor, as Python's %


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Builder:
    def build(ctx: NodeContext) -> Kernel:
        def reduce(*xs: torch.Tensor) -> torch.Tensor:
            out = xs[0]
            for x in xs[1:]:
                out = fn(out, x)
            return out

        return reduce

    return build


register("Max")(_variadic(torch.maximum))
register("Min")(_variadic(torch.minimum))
register("Sum")(_variadic(operator.add))
