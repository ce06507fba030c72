"""How fast the torch stages run a graph: channels-last memory layout and torch.compile, with an eager fallback.

Usage:
    acceleration = Acceleration.resolve("auto", "auto", input_size=(224, 224), device=torch.device("cpu"))
    acceleration.describe()                          # "channels-last, compiled": for manifests and reports
    to_channels_last(module)                         # 4-D float weights and every 4-D input in NHWC order
    forward = CompiledForward(fn, enabled=acceleration.compile, what="the teacher")
    out = forward(x)                                 # compiled when it can be, else eager (one warning)
    forward.fall_back(err)                           # a failure of the first step's backward: eager from now on
    forward.confirm()                                # a whole step ran: later errors are the computation's own

Used by generation (the teacher's training forward) and by reconstruction's distribution correction (one
compile per unit, reused for its 50 steps); not by the reconstruction loop itself, whose QDrop hooks draw
random masks from a generator (a graph break per quantizer).

Neither option changes what is computed, only the order of floating-point operations inside kernels
(channels-last convolutions use other oneDNN algorithms; inductor fuses element-wise ops and reductions),
so results agree to float32 rounding, not bit for bit. The third switch, `reuse_memory` (executor.memory),
changes no value, only time and peak memory. "auto" turns all three on for ImageNet-size inputs on the CPU,
where bench/torch_speed.py measures them (together, 2 cores, against the code before them, rounds of f76e01c
and cce9224: generation 2.50-3.77x on Lite0, 2.61-3.60x on MobileNetV2, 1.58-1.63x on ResNet-18 at 224x224,
after a one-off compile of 30-55 s; reconstruction 2.04-2.19x / 2.10-2.18x / 1.72-1.83x together with its
distribution-correction rewrite, the QDrop masks of recon.qdrop and the stems' polyphase input gradient of
executor.ops.polyphase), and off for small inputs (32x32), where generation therefore stays byte-identical to
the code before any of them existed.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from toolchain.core.memory import reuse_available
from toolchain.errors import ConfigError

SWITCHES = ("auto", "on", "off")
IMAGENET_SIZE = 96  # inputs at least this many pixels on their short side count as ImageNet-size for "auto"
RECOMPILE_LIMIT = 1024  # compilations of one function (a unit each in reconstruction) before dynamo gives up



ModuleT = TypeVar("ModuleT", bound=nn.Module)

@dataclass(frozen=True)
class Acceleration:
    """Resolved switches: NHWC layout for 4-D tensors, torch.compile of the training forward passes, and freed
    memory kept in the process for reuse during the torch loops (executor.memory)."""

    channels_last: bool = False
    compile: bool = False
    reuse_memory: bool = False

    @classmethod
    def resolve(cls, channels_last: str, compile: str, input_size: tuple[int, ...] | None,
                device: torch.device, reuse_memory: str = "auto") -> Acceleration:
        """"auto" -> on for ImageNet-size inputs (short side >= 96) on the CPU; "on"/"off" as said."""
        for name, value in (("channels_last", channels_last), ("compile", compile), ("reuse_memory", reuse_memory)):
            if value not in SWITCHES:
                raise ConfigError(f"{name} must be one of {', '.join(SWITCHES)}, got {value!r}")
        large = input_size is not None and len(input_size) >= 2 and min(input_size[-2:]) >= IMAGENET_SIZE
        auto = large and device.type == "cpu"  # the GPU path has not been measured with either
        layout = channels_last == "on" or (channels_last == "auto" and auto)
        compiled = compile == "on" or (compile == "auto" and auto and compiler_available())
        reuse = (reuse_memory == "on" or (reuse_memory == "auto" and auto)) and reuse_available()
        return cls(layout, compiled, reuse)

    def describe(self) -> str:
        parts = ["channels-last" if self.channels_last else "NCHW", "compiled" if self.compile else "eager"]
        if self.reuse_memory:
            parts.append("freed memory reused")
        return ", ".join(parts)


def compiler_available() -> bool:
    """Inductor on the CPU writes C++: without a compiler on PATH, "auto" stays eager instead of failing later."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def to_channels_last(module: ModuleT) -> ModuleT:
    """4-D float parameters and buffers in channels-last order, and the module's 4-D inputs converted on entry.

    Convolutions follow their input's layout (oneDNN picks NHWC kernels when the input or the weight is NHWC)
    and element-wise ops keep it, so one conversion at the input carries through the whole graph.
    """
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # nn.Module.to takes it at runtime
    if hasattr(module, "input_memory_format"):
        setattr(module, "input_memory_format", torch.channels_last)  # noqa: B010 - an OnnxModule attribute nn.Module's stubs do not know
    return module


class CompiledForward:
    """`fn` under torch.compile (static shapes) while it works; the eager `fn` from its first failure on.

    A compile error surfaces at the first call (forward) or at the first backward; the caller reports the
    latter through `fall_back`, redoes the step and calls `confirm` once a whole step succeeded. After
    confirmation an error is the computation's own and propagates (eager would raise it too).
    """

    def __init__(self, fn: Callable[..., Any], enabled: bool, what: str) -> None:
        self.eager, self.what = fn, what
        self.compiled = torch.compile(fn, dynamic=False) if enabled else None
        self.confirmed = not enabled

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None and torch.is_grad_enabled():
            if self.confirmed:
                return self._call_compiled(*args, **kwargs)
            try:
                return self._call_compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - any compile failure: eager computes the same values
                self.fall_back(err)
        # No-grad passes (initial and final evaluation) run a handful of times: compiling them would cost
        # more than it saves, and the eager forward is the same graph.
        return self.eager(*args, **kwargs)

    def _call_compiled(self, *args: Any, **kwargs: Any) -> Any:
        # Reconstruction compiles the same function once per unit (another graph each time); dynamo's default of 8
        # compilations per function would silently turn every later unit eager.
        compiled = self.compiled
        assert compiled is not None, "called only while compiling"
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return compiled(*args, **kwargs)

    def fall_back(self, err: BaseException) -> None:
        if self.confirmed:
            raise err
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        # stderr, as the progress bars: the library has no logger, and a warning filter must not hide a 4x slowdown
        print(f"warning: torch.compile could not compile {self.what} ({type(err).__name__}: {first}); running it "
              "eagerly (the same values up to float rounding, slower); --compile off skips the attempt", file=sys.stderr)
        self.compiled = None
        self.confirmed = True

    def confirm(self) -> None:
        self.confirmed = True
