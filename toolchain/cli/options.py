"""Options shared by several `toolchain` commands: input preprocessing, and where/how the stages run.

Usage:
    @cli.command("quantize")
    @preprocessing_options
    @execution_options(reconstruction=True)
    def quantize_command(..., **kwargs):
        overrides = preprocessing_overrides(kwargs)   # pops the preprocessing options
        execution = execution_from(kwargs)            # pops the execution options
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from toolchain.core.execution import Execution, provider_names
from toolchain.errors import ConfigError
from toolchain.onnxio.preprocessing import PreprocessingOverrides

F = TypeVar("F", bound=Callable[..., Any])


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 0.485,0.456,0.406, got {value!r}") from None


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.lower().replace("x", ",").split(",")
    try:
        numbers = [int(p) for p in parts if p]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers) <= 0:
        raise click.BadParameter(f"expected SIZE or HEIGHTxWIDTH such as 224 or 32x32, got {value!r}")
    return (numbers[0], numbers[-1])


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise click.BadParameter(f"class-name file {path} does not exist")
        return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    return tuple(v.strip() for v in value.split(",") if v.strip())


def preprocessing_options(func: F) -> F:
    """Options that describe (or override) the model's input preprocessing."""
    options = [
        click.option("--mean", callback=_floats, help="Per-channel mean after pixel scaling, e.g. 0.485,0.456,0.406."),
        click.option("--std", callback=_floats, help="Per-channel std, e.g. 0.229,0.224,0.225."),
        click.option("--input-size", callback=_size, help="Model input size: 224 or HEIGHTxWIDTH."),
        click.option("--channel-order", type=click.Choice(["RGB", "BGR"]), help="Channel order the model expects."),
        click.option("--pixel-scale", type=float, help="Raw pixels are divided by this first (default 255)."),
        click.option("--crop-fraction", type=float, help="Centre-crop fraction when resizing (ImageNet: 0.875)."),
        click.option("--class-names", callback=_names, help="Comma-separated class names, or @FILE with one per line."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def preprocessing_overrides(kwargs: dict[str, Any]) -> Any:

    keys = ("mean", "std", "input_size", "channel_order", "pixel_scale", "crop_fraction", "class_names")
    return PreprocessingOverrides(**{k: kwargs.pop(k) for k in keys})




def _cache_budget(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from toolchain.quantize.reconstruct.cache import parse_bytes  # deferred: torch loads only when this runs (start-up time)

    try:
        return parse_bytes(value)
    except ConfigError as err:
        raise click.BadParameter(str(err)) from None


def _auto_switch(flag: str, help: str) -> Callable[[F], F]:
    """An auto/on/off option of the torch stages (default auto: the stage decides by input size and device)."""
    return click.option(flag, type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True, help=help)


def execution_options(reconstruction: bool = False, providers: bool = False) -> Callable[[F], F]:
    """--device, --threads, --channels-last, --compile and --reuse-memory (torch stages); with `reconstruction`,
    --cache-budget and --spill-dir; with `providers`, --providers (onnxruntime)."""

    def decorate(func: F) -> F:
        options = [
            click.option("--device", default="auto", show_default=True,
                         help="Where torch runs: auto (a GPU when torch sees one), cpu, cuda or cuda:N."),
            click.option("--threads", type=click.IntRange(min=1),
                         help="torch (and onnxruntime) intra-op threads [default: OMP_NUM_THREADS if set, else the "
                              "cores this process may use, shared among torchrun's local processes]. Threads wait "
                              "passively (OMP_WAIT_POLICY=PASSIVE, unless set): beside a busy process, spinning "
                              "threads made generation 4-20x slower (README, threads table)."),
            _auto_switch("--channels-last",
                         "NHWC memory layout in the torch stages; auto = on for inputs of 96 px and more on "
                         "the CPU (with --compile and --reuse-memory, generation 1.6-2.6x and reconstruction 1.7-2.2x "
                         "faster at 224x224: README 'Torch stages at ImageNet size')."),
            _auto_switch("--compile",
                         "torch.compile generation's teacher forward and reconstruction's distribution-correction step "
                         "(a one-off compile: about a minute for a whole network, seconds per unit; then 1.5-2.1x "
                         "faster at 224x224 on the CPU); auto = on for inputs of 96 px and more on the CPU when a C++ "
                         "compiler is on PATH; a failed compile runs eagerly."),
            _auto_switch("--reuse-memory",
                         "Keep freed memory in the process during the torch loops instead of returning it to the "
                         "system (glibc), so that each step does not pay for fresh pages: 1.3-1.6x faster at 224x224 "
                         "on the CPU, reconstruction trimming the heap between units (peaks within 0.2 GB of off); "
                         "auto = on for inputs of 96 px and more on the CPU (Linux with glibc)."),
        ]
        if reconstruction:
            options += [
                click.option("--cache-budget", callback=_cache_budget,
                             help="Memory for reconstruction's per-sample tensors, e.g. 4G or 512M; beyond it they "
                                  "spill to files read back per batch (same result) [default: a quarter of the free memory, at most 1G]."),
                click.option("--spill-dir", type=click.Path(file_okay=False),
                             help="Folder for the spill files [default: the system's temporary folder]."),
            ]
        if providers:
            options.append(click.option("--providers", help="onnxruntime execution providers in order, e.g. cuda,cpu "
                                                            "[default: cpu]."))
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def execution_from(kwargs: dict[str, Any]) -> Any:
    """The Execution the options describe (they are popped from `kwargs`)."""

    names = provider_names(kwargs.pop("providers", None))
    return Execution(device=kwargs.pop("device"), threads=kwargs.pop("threads"),
                     cache_budget=kwargs.pop("cache_budget", None), spill_dir=kwargs.pop("spill_dir", None),
                     providers=names, channels_last=kwargs.pop("channels_last", "auto"),
                     compile=kwargs.pop("compile", "auto"), reuse_memory=kwargs.pop("reuse_memory", "auto"))
