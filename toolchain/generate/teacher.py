"""The frozen model whose BN statistics the images must match: one forward returns logits and BN-input moments.

Usage:
    teacher = Teacher.from_onnx(model_proto)         # OnnxModule, weights frozen (buffers)
    teacher = Teacher.from_onnx(model_proto, Acceleration(channels_last=True, compile=True))   # ImageNet-size
    teacher = Teacher.from_torch(native_module)      # the same interface on an nn.Module (benchmarks, tests)
    out = teacher.run(x, per_image=range(8, 19), keep_last=True)
    out.logits, out.m1, out.m2                       # m1/m2: flat (sum_l C_l,) per-channel E[A], E[A^2]
    teacher.layout.offsets, teacher.targets.mean     # where layer l's channels sit in the flat vectors

Moments are taken inside the BN-input hook (x.mean over every axis but 1), so a no-grad pass keeps no
activations alive, and all layers' statistics travel as one flat vector (one all-reduce, one loss op).
With `acceleration.compile`, gradient-enabled forwards (the training steps) run through torch.compile,
which fuses each BN input's moments into the ops around it; the engine reports a failure of the first
compiled step through `fall_back` (see executor.acceleration).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from torch import nn

from toolchain.core.acceleration import Acceleration, CompiledForward, to_channels_last
from toolchain.errors import GraphError
from toolchain.executor import OnnxModule

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
    def forward(ctx: Any, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = (0, *range(2, a.dim()))
        ctx.save_for_backward(a)
        return a.mean(dims), (a * a).mean(dims)

    @staticmethod
    def backward(ctx: Any, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        count = a.numel() // a.shape[1]
        shape = (1, -1, *([1] * (a.dim() - 2)))
        return torch.addcmul(g1.reshape(shape) / count, a, g2.reshape(shape) * (2.0 / count))


class Teacher:
    """A frozen module with a BN-input hook, the BN layout and the running statistics as flat targets."""

    def __init__(self, module: nn.Module, layout: Layout, mean: torch.Tensor, var: torch.Tensor,
                 install: Callable[[BnHook], Any], acceleration: Acceleration | None = None) -> None:
        if not layout.names:
            raise GraphError("the model has no BatchNormalization nodes")
        self.module = module.eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        self.layout = layout
        var = var.float()
        self.targets = Targets(mean.float(), var, torch.sqrt(var + STD_EPS))
        self._index = {name: i for i, name in enumerate(layout.names)}
        self.device = torch.device("cpu")
        self.acceleration = acceleration or Acceleration()
        if self.acceleration.channels_last:
            to_channels_last(module)
        # One hook for the teacher's life, reading what to collect from `_request`: a forward with the same
        # request is the same code, so torch.compile traces it once (a hook per call would recompile).
        self._records: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._request: tuple[frozenset[int], bool] = (frozenset(), False)
        self._extras: dict[str, torch.Tensor] = {}
        install(self._on_bn_input)
        self._forward = CompiledForward(self._collect, self.acceleration.compile, "the teacher's forward pass")

    def to(self, device: torch.device) -> Teacher:
        """Run the module on `device` (a GPU): images, optimisers and losses stay on the CPU; each forward moves
        its batch there and its outputs back (differentiably), so only the network's work moves."""
        self.module.to(device)
        self.device = torch.device(device)
        return self

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto, acceleration: Acceleration | None = None) -> Teacher:

        module = OnnxModule(model)  # initializers are buffers: nothing to differentiate but the input
        stats = module.bn_statistics()
        layout = Layout(tuple(bn.name for bn in module.bn_nodes), tuple(bn.channels for bn in module.bn_nodes))
        mean = torch.cat([stats[n][0].reshape(-1) for n in layout.names]) if layout.names else torch.zeros(0)
        var = torch.cat([stats[n][1].reshape(-1) for n in layout.names]) if layout.names else torch.zeros(0)
        return cls(module, layout, mean, var, module.register_bn_input_hook, acceleration)

    @classmethod
    def from_torch(cls, module: nn.Module) -> Teacher:
        """The same interface on a native module (BatchNorm layers in registration order = graph order for
        sequential models): forward pre-hooks feed the BN inputs."""
        bns = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        layout = Layout(tuple(name for name, _ in bns), tuple(m.num_features for _, m in bns))
        stats = []
        for name, m in bns:
            if m.running_mean is None or m.running_var is None:
                raise GraphError(f"BatchNorm {name!r} keeps no running statistics (track_running_stats=False): there "
                                 "is nothing to match; generate from a model trained with them")
            stats.append((m.running_mean.detach().clone(), m.running_var.detach().clone()))
        mean = torch.cat([m for m, _ in stats]) if bns else torch.zeros(0)
        var = torch.cat([v for _, v in stats]) if bns else torch.zeros(0)

        def install(fn: BnHook) -> None:
            for name, m in bns:
                m.register_forward_pre_hook(lambda _m, args, name=name: fn(name, args[0]))

        return cls(module, layout, mean, var, install)

    def run(self, x: torch.Tensor, per_image: Iterable[int] = (), keep_last: bool = False) -> Outputs:
        """Forward `x`; collect per-channel first/second moments of every BN input (with grad if x has one)."""
        self._request = (frozenset(per_image), keep_last)
        logits, m1, m2, image_mean, image_var, last, seen = self._forward(x.to(self.device))
        if len(seen) != len(self.layout.names):
            missing = [name for i, name in enumerate(self.layout.names) if i not in set(seen)]
            raise GraphError(f"BatchNormalization nodes {missing[:3]} did not run in the forward pass; the graph is not a plain feed-forward model")
        if self.device.type != "cpu":  # the losses are computed on the CPU, beside the stored moments
            logits, m1, m2 = logits.cpu(), m1.cpu(), m2.cpu()
            image_mean, image_var, last = (None if v is None else v.cpu() for v in (image_mean, image_var, last))
        return Outputs(logits, m1, m2, image_mean, image_var, last)

    def fall_back(self, err: BaseException) -> None:
        """A training step through the compiled forward failed in its backward: eager from now on (see CompiledForward)."""
        self._forward.fall_back(err)

    def confirm(self) -> None:
        """A whole training step (forward and backward) ran: later errors are the computation's own."""
        self._forward.confirm()

    @property
    def compiled(self) -> bool:
        return self._forward.active and not self._forward.confirmed

    def _on_bn_input(self, name: str, a: torch.Tensor) -> None:
        i = self._index[name]
        wanted, keep_last = self._request
        m1, m2 = Moments.apply(a)
        self._records.append((i, m1, m2))
        if i in wanted:
            spatial = tuple(range(2, a.dim()))
            var, mean = torch.var_mean(a, spatial, correction=0)
            self._extras[f"var{i}"], self._extras[f"mean{i}"] = var, mean
        if keep_last and i == len(self.layout.names) - 1:
            self._extras["last"] = a

    def _collect(self, x: torch.Tensor) -> tuple[Any, ...]:
        """logits, flat m1, m2, per-image mean and var (or None), the last BN input (or None), BN indices seen."""
        self._records.clear()
        self._extras.clear()
        logits = self.module(x)
        records = sorted({r[0]: r for r in self._records}.values(), key=lambda r: r[0])  # a node run twice: its last
        seen = tuple(r[0] for r in records)
        m1 = torch.cat([r[1] for r in records])
        m2 = torch.cat([r[2] for r in records])
        order = sorted(self._request[0])
        extras = self._extras
        image_mean = torch.cat([extras[f"mean{i}"] for i in order], dim=1) if order else None
        image_var = torch.cat([extras[f"var{i}"] for i in order], dim=1) if order else None
        last = extras.get("last")
        self._records.clear()  # the graph keeps what the losses need; the lists need not
        self._extras.clear()
        return logits, m1, m2, image_mean, image_var, last, seen
