"""Where and how the torch and onnxruntime stages run: device, threads, memory budget, providers.

Usage:
    execution = Execution(device="auto", threads=None, cache_budget=None)   # the defaults
    device = execution.torch_device()        # cuda when torch sees a GPU (auto), else cpu
    execution.apply_threads()                # torch intra-op threads: the cores this process may use
    execution.thread_count                   # the same count, for onnxruntime sessions
    execution.acceleration((224, 224))       # channels-last / torch.compile / memory reuse for that input size ("auto")

None of this changes what is computed, only where and how fast (and, for the cache budget, in which
memory): it is kept apart from QuantConfig / ReconConfig, which reports and checkpoints record as the
identity of a run. Threads default to OMP_NUM_THREADS when it is set, else to the cores this process
may use (its CPU affinity, shared among the processes of a torchrun job on this node): torch's own
default counts the machine's cores, which oversubscribes a CPU set limited by a container, taskset or a
second torchrun process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from toolchain.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider", "openvino": "OpenVINOExecutionProvider"}


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), divided among a torchrun job's local processes."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or "1"))
    except ValueError:
        local_processes = 1
    return max(1, cores // local_processes)


WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def prefer_passive_waiting() -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE unless the user chose a wait policy; True when it was set here.

    torch's OpenMP threads spin while they wait for work. Beside another busy process that spinning takes
    the cores the working threads need: `toolchain generate` on ResNet-20 went from 0.29 s to 6.3 s per
    iteration next to a 2-thread torch job, and to 0.61 s with PASSIVE (bench/scale.py, threads suite).
    Alone, PASSIVE costs about 10 % in reconstruction (many small kernels) and nothing in generation.
    It must be set before torch is imported: the CLI calls this first; OMP_WAIT_POLICY=ACTIVE (or any
    GOMP_SPINCOUNT) in the environment keeps the spinning.
    """
    if any(name in os.environ for name in WAIT_VARIABLES):
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def provider_names(spec: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """'cuda,cpu' or ('CUDAExecutionProvider', ...) -> onnxruntime provider names, checked against this install."""
    import onnxruntime as ort  # deferred: onnxruntime loads only when this runs (start-up time)

    if spec is None or spec == "" or spec == ():
        return ("CPUExecutionProvider",)
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = tuple(PROVIDER_ALIASES.get(item.lower(), item) for item in items if item)
    available = ort.get_available_providers()
    missing = [name for name in names if name not in available]
    if missing:
        raise ConfigError(f"onnxruntime provider(s) {', '.join(missing)} are not in this onnxruntime install "
                          f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA, or pass --providers cpu")
    if "CPUExecutionProvider" not in names:
        names = (*names, "CPUExecutionProvider")  # the fallback for ops a GPU provider does not take
    return names


@dataclass(frozen=True)
class Execution:
    """How the stages run. `cache_budget` in bytes (None: recon.cache.default_budget())."""

    device: str = "auto"
    threads: int | None = None
    cache_budget: int | None = None
    spill_dir: str | None = None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    channels_last: str = "auto"
    compile: str = "auto"
    reuse_memory: str = "auto"

    def __post_init__(self) -> None:
        if not DEVICE_PATTERN.match(self.device):
            raise ConfigError(f"unknown device {self.device!r}: choose auto, cpu, cuda or cuda:N")
        for name in ("channels_last", "compile", "reuse_memory"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise ConfigError(f"{name} must be auto, on or off, got {getattr(self, name)!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.cache_budget is not None and self.cache_budget < 0:
            raise ConfigError(f"the cache budget must be >= 0 bytes, got {self.cache_budget}")

    @property
    def thread_count(self) -> int:
        """`threads`, else OMP_NUM_THREADS when set (the user's own choice for torch), else usable_cores()."""
        if self.threads:
            return self.threads
        try:
            from_env = int(os.environ.get("OMP_NUM_THREADS", "") or 0)
        except ValueError:
            from_env = 0
        return from_env if from_env > 0 else usable_cores()

    def apply_threads(self) -> int:
        """Set torch's intra-op threads (once per process matters: it is global); returns the count."""
        import torch  # deferred: torch loads only when this runs (start-up time)

        count = self.thread_count
        if torch.get_num_threads() != count:
            torch.set_num_threads(count)
        return count

    def acceleration(self, input_size: tuple[int, ...] | None):
        """The executor.acceleration.Acceleration for a model with this input size (H, W) on torch_device()."""
        from toolchain.core.acceleration import Acceleration  # deferred: torch loads only when this runs (start-up time)

        return Acceleration.resolve(self.channels_last, self.compile, input_size, self.torch_device(), self.reuse_memory)

    def torch_device(self):
        """The torch.device for this run; ConfigError when CUDA is asked for and torch cannot use it."""
        import torch  # deferred: torch loads only when this runs (start-up time)

        if self.device == "auto":
            if not torch.cuda.is_available():
                return torch.device("cpu")
            local_rank = int(os.environ.get("LOCAL_RANK", "0") or "0")  # torchrun: one GPU per local process
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if self.device == "cpu":
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {self.device}: this torch build sees no CUDA GPU "
                              f"(torch {torch.__version__}); use --device cpu or auto, or install a CUDA build of torch")
        device = torch.device(self.device)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {self.device}: torch sees {torch.cuda.device_count()} GPU(s) "
                              f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
        return device


def describe_duration(seconds: float) -> str:
    """`seconds` as a person reads a duration (40 s, 12 min, 2.3 h): run-time estimates before long stages."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
