"""The op registry: op type -> a builder that turns one ONNX node into a torch kernel (a closure).

Usage:
    from toolchain.executor.registry import Kernel, NodeContext, register

    @register("HardSigmoid")
    def _hard_sigmoid(ctx: NodeContext) -> Kernel:
        alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)   # read once, at construction
        return lambda x: torch.clamp(x * alpha + beta, 0.0, 1.0)

A builder runs once per node when an OnnxModule is built. It reads the node's attributes, and the values
of its *static* inputs (shapes, axes, pads, clip bounds: declared with `register(op, static=...)`) when
they are known at construction, and returns a kernel. The kernel is called on every forward with all of
the node's declared inputs as tensors, in order (None for an absent optional input), and returns one
tensor, or a tuple for a node with several outputs. Everything that does not depend on the input's
shape is decided in the builder, so a forward pass is a loop of direct calls into torch.

The kernels themselves live in ops.py (importing toolchain.executor registers them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.errors import GraphError

Kernel = Callable[..., Any]  # (*inputs: Tensor | None) -> Tensor | tuple[Tensor, ...]
Builder = Callable[["NodeContext"], Kernel]


@dataclass(frozen=True)
class OpSpec:
    """A registered op: its builder and the input positions whose value it may read at construction."""

    builder: Builder
    static: frozenset[int]


_REGISTRY: dict[str, OpSpec] = {}


def register(op_type: str, static: Sequence[int] = ()) -> Callable[[Builder], Builder]:
    """Decorator: make `builder` the kernel builder of `op_type`.

    `static` lists the inputs that are configuration rather than data (shapes, axes, pads, bounds): the
    builder may read them at construction, and their initializers are never made trainable.
    """

    def decorate(builder: Builder) -> Builder:
        _REGISTRY[op_type] = OpSpec(builder, frozenset(static))
        return builder

    return decorate


def op_spec(op_type: str) -> OpSpec | None:
    return _REGISTRY.get(op_type)


def supported_spec(op_type: str) -> OpSpec:
    """The spec of an op type the graph check (graph_prep) already found supported."""
    spec = _REGISTRY.get(op_type)
    if spec is None:
        raise KeyError(f"no kernel for op type {op_type!r}: graph_prep should have rejected the graph")
    return spec


def supported_ops() -> list[str]:
    """The op types the executor can run, sorted."""
    return sorted(_REGISTRY)


@dataclass(frozen=True)
class NodeContext:
    """What a builder sees of one node: name, attributes, inputs, and the constant values it may read.

    `constants[i]` is input i's value when it is static for this op and known at construction (an
    initializer or a Constant output), else None. `shapes[i]` is input i's shape whenever the input is
    known at construction, static or not (a weight's rank, a scale's length), else None; the value of a
    non-static input is never baked into a kernel, since it may be a trainable parameter.
    """

    name: str
    op_type: str
    attrs: Mapping[str, Any]
    inputs: tuple[str, ...]
    num_outputs: int
    constants: tuple[np.ndarray | None, ...]
    opset: int
    shapes: tuple[tuple[int, ...] | None, ...] = ()

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def has_input(self, index: int) -> bool:
        return index < len(self.inputs) and self.inputs[index] != ""

    def const(self, index: int) -> np.ndarray | None:
        return self.constants[index] if index < len(self.constants) else None

    def shape(self, index: int) -> tuple[int, ...] | None:
        return self.shapes[index] if index < len(self.shapes) else None

    def const_ints(self, index: int) -> list[int] | None:
        value = self.const(index)
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]

    def error(self, problem: str) -> GraphError:
        return GraphError(f"{self.op_type} node '{self.name}': {problem}")
