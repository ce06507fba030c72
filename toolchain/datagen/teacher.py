"""The frozen model whose BN statistics the images must match: one forward returns logits and BN-input moments.

Usage:
    teacher = Teacher.from_onnx(model_proto)         # OnnxModule, weights frozen (buffers)
    teacher = Teacher.from_torch(native_module)      # the same interface on an nn.Module (benchmarks, tests)
    out = teacher.run(x, per_image=range(8, 19), keep_last=True)
    out.logits, out.m1, out.m2                       # m1/m2: flat (sum_l C_l,) per-channel E[A], E[A^2]
    teacher.layout.offsets, teacher.targets.mean     # where layer l's channels sit in the flat vectors

Moments are taken inside the BN-input hook (x.mean over every axis but 1), so a no-grad pass keeps no
activations alive, and all layers' statistics travel as one flat vector (one all-reduce, one loss op).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from torch import nn

from toolchain.errors import GraphError

BnHook = Callable[[str, torch.Tensor], None]
STD_EPS = 1e-6  # sqrt(var + 1e-6), as DGH and ZeroQ


@dataclass(frozen=True)
class Layout:
    """Channel layout of the flat statistics vectors: BN layers in graph order."""

    names: tuple[str, ...]
    channels: tuple[int, ...]

    @property
    def offsets(self) -> tuple[int, ...]:
        starts, total = [], 0
        for c in self.channels:
            starts.append(total)
            total += c
        return tuple(starts)

    @property
    def total(self) -> int:
        return sum(self.channels)

    def span(self, first: int, last: int | None = None) -> slice:
        """Flat slice covering layers first..last-1 (last = None: to the end)."""
        last = len(self.channels) if last is None else last
        start = self.offsets[first] if first < len(self.channels) else self.total
        return slice(start, start + sum(self.channels[first:last]))


@dataclass(frozen=True)
class Targets:
    """Running statistics, flat over the layout: mean, var and std = sqrt(var + 1e-6)."""

    mean: torch.Tensor
    var: torch.Tensor
    std: torch.Tensor


@dataclass
class Outputs:
    """One forward: logits, flat moments, and optional per-image statistics / last BN input."""

    logits: torch.Tensor
    m1: torch.Tensor
    m2: torch.Tensor
    image_mean: torch.Tensor | None = None  # (N, channels of the per-image layers), spatial mean
    image_var: torch.Tensor | None = None   # (N, ...), biased spatial variance
    last_input: torch.Tensor | None = None  # the last BN node's input


class Moments(torch.autograd.Function):
    """Per-channel E[a] and E[a^2] over every axis but 1, with one fused backward:
    d/da = (g1 + 2 a g2) / count. About 25 % faster per step than two autograd means on ResNet-20."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        dims = (0, *range(2, a.dim()))
        ctx.save_for_backward(a)
        return a.mean(dims), (a * a).mean(dims)

    @staticmethod
    def backward(ctx: Any, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (a,) = ctx.saved_tensors
        count = a.numel() // a.shape[1]
        shape = (1, -1, *([1] * (a.dim() - 2)))
        return torch.addcmul(g1.reshape(shape) / count, a, g2.reshape(shape) * (2.0 / count))


class Teacher:
    """A frozen module with a BN-input hook, the BN layout and the running statistics as flat targets."""

    def __init__(self, module: nn.Module, layout: Layout, mean: torch.Tensor, var: torch.Tensor,
                 hook: Callable[[BnHook], contextlib.AbstractContextManager]) -> None:
        if not layout.names:
            raise GraphError("the model has no BatchNormalization nodes")
        self.module = module.eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        self.layout = layout
        var = var.float()
        self.targets = Targets(mean.float(), var, torch.sqrt(var + STD_EPS))
        self._hook = hook
        self._index = {name: i for i, name in enumerate(layout.names)}
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> Teacher:
        """Run the module on `device` (a GPU): images, optimisers and losses stay on the CPU; each forward moves
        its batch there and its outputs back (differentiably), so only the network's work moves."""
        self.module.to(device)
        self.device = torch.device(device)
        return self

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto) -> Teacher:
        from toolchain.executor import OnnxModule

        module = OnnxModule(model)  # initializers are buffers: nothing to differentiate but the input
        stats = module.bn_statistics()
        layout = Layout(tuple(bn.name for bn in module.bn_nodes), tuple(bn.channels for bn in module.bn_nodes))
        mean = torch.cat([stats[n][0].reshape(-1) for n in layout.names]) if layout.names else torch.zeros(0)
        var = torch.cat([stats[n][1].reshape(-1) for n in layout.names]) if layout.names else torch.zeros(0)
        return cls(module, layout, mean, var, module.bn_input_hook)

    @classmethod
    def from_torch(cls, module: nn.Module) -> Teacher:
        """The same interface on a native module (BatchNorm layers in registration order = graph order for
        sequential models): forward pre-hooks feed the BN inputs."""
        bns = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        layout = Layout(tuple(name for name, _ in bns), tuple(m.num_features for _, m in bns))
        mean = torch.cat([m.running_mean.detach().clone() for _, m in bns]) if bns else torch.zeros(0)
        var = torch.cat([m.running_var.detach().clone() for _, m in bns]) if bns else torch.zeros(0)

        @contextlib.contextmanager
        def hook(fn: BnHook) -> Iterator[None]:
            handles = [m.register_forward_pre_hook(lambda _m, args, name=name: fn(name, args[0])) for name, m in bns]
            try:
                yield
            finally:
                for handle in handles:
                    handle.remove()

        return cls(module, layout, mean, var, hook)

    def run(self, x: torch.Tensor, per_image: Iterable[int] = (), keep_last: bool = False) -> Outputs:
        """Forward `x`; collect per-channel first/second moments of every BN input (with grad if x has one)."""
        count = len(self.layout.names)
        m1: list[torch.Tensor | None] = [None] * count
        m2: list[torch.Tensor | None] = [None] * count
        wanted = set(per_image)
        image_mean: dict[int, torch.Tensor] = {}
        image_var: dict[int, torch.Tensor] = {}
        last: list[torch.Tensor] = []
        index, last_index = self._index, count - 1

        def hook(name: str, a: torch.Tensor) -> None:
            i = index[name]
            m1[i], m2[i] = Moments.apply(a)
            if i in wanted:
                spatial = tuple(range(2, a.dim()))
                image_var[i], image_mean[i] = torch.var_mean(a, spatial, correction=0)
            if keep_last and i == last_index:
                last.append(a)

        with self._hook(hook):
            logits = self.module(x.to(self.device))
        if self.device.type != "cpu":  # the losses are computed on the CPU, beside the stored moments
            m1 = [m.cpu() for m in m1]
            m2 = [m.cpu() for m in m2]
            logits = logits.cpu()
            image_mean = {i: v.cpu() for i, v in image_mean.items()}
            image_var = {i: v.cpu() for i, v in image_var.items()}
            last = [a.cpu() for a in last]
        if any(m is None for m in m1):
            missing = [self.layout.names[i] for i, m in enumerate(m1) if m is None]
            raise GraphError(f"BatchNormalization nodes {missing[:3]} did not run in the forward pass; the graph is not a plain feed-forward model")
        out = Outputs(logits, torch.cat(m1), torch.cat(m2))  # type: ignore[arg-type]
        if wanted:
            order = sorted(wanted)
            out.image_mean = torch.cat([image_mean[i] for i in order], dim=1)
            out.image_var = torch.cat([image_var[i] for i in order], dim=1)
        if last:
            out.last_input = last[0]
        return out
