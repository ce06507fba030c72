"""`toolchain run [CONFIG]`: the whole job from one config file, flags on top (-> pipeline.RunConfig -> api.run).

Usage:
    toolchain run                                         # the built-in default: digits model, W8A8 + W4A4 pdquant
    toolchain run pipeline.yaml --max-drop 0.02 --set quantize.*.preset=fast
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from toolchain.cli.errors import handle_errors
from toolchain.cli.output import output_options, progress_wanted, quiet, say
from toolchain.errors import ConfigError, GateFailed


def _flag_overrides(model: str | None, run_dir: str | None, overwrite: bool, calib: str | None, eval_data: str | None,
                    min_top1: float | None, max_drop: float | None, min_agreement: float | None, seed: int | None,
                    device: str | None, threads: int | None) -> list[str]:
    """The named flags as KEY=VALUE overrides (JSON values, which YAML reads back unchanged)."""
    pairs = {"model": model, "run_dir": run_dir, "calibration": calib, "evaluate.data": eval_data,
             "gates.min_top1": min_top1, "gates.max_drop": max_drop, "gates.min_agreement": min_agreement,
             "execution.device": device, "execution.threads": threads, "overwrite": True if overwrite else None}
    if seed is not None:
        pairs.update({"generate.seed": seed, "quantize.*.seed": seed})
    return [f"{key}={json.dumps(value)}" for key, value in pairs.items() if value is not None]


@click.command("run")
@click.argument("config_file", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False))
@click.option("--run-dir", type=click.Path(file_okay=False), help="The run directory [default: runs/CONFIG-NAME, runs/default].")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory (only a run directory: one with "
                                                "config.resolved.yaml).")
@click.option("--resume", is_flag=True, help="Continue a stopped run (Ctrl-C, a kill) in its run directory: finished "
                                             "stages are reused, the interrupted one continues from its checkpoint. "
                                             "Needs the same config and flags (the config hash is checked).")
@click.option("--model", help="Zoo name, package.module:factory or an .onnx file (config key model).")
@click.option("--calib", type=click.Path(), help="Existing calibration data instead of generating it: calibration .npz, "
                                                 ".npz keyed by the input name, test_data_set_* folder, or an image dataset.")
@click.option("--eval-data", type=click.Path(), help="Labelled images to evaluate on (config key evaluate.data).")
@click.option("--min-top1", type=click.FloatRange(0, 1), help="Gate: every quantized model's top-1 at least this (0.97 = 97 %).")
@click.option("--max-drop", type=click.FloatRange(0, 1), help="Gate: top-1 drop against FP32 at most this (0.01 = 1 point).")
@click.option("--min-agreement", type=click.FloatRange(0, 1), help="Gate: top-1 agreement with FP32 at least this.")
@click.option("--seed", type=int, help="Seed of generation and of every quantize entry.")
@click.option("--device", help="Where torch runs: auto, cpu, cuda or cuda:N (config key execution.device).")
@click.option("--threads", type=click.IntRange(min=1), help="torch and onnxruntime threads (execution.threads).")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override any config key (repeatable): generate.n=512, quantize.1.w_bits=2, quantize.*.preset=fast.")
@output_options(default_level="info")
@handle_errors
def run_command(config_file: str | None, run_dir: str | None, overwrite: bool, resume: bool, model: str | None,
                calib: str | None,
                eval_data: str | None, min_top1: float | None, max_drop: float | None, min_agreement: float | None,
                seed: int | None, device: str | None, threads: int | None, assignments: tuple[str, ...],
                as_json: bool) -> None:
    """Export -> generate -> quantize -> evaluate -> gates -> report, from CONFIG (YAML or JSON) or the default.

    Without CONFIG it runs the built-in default offline: the digits ResNet (trained by this project,
    shipped in the package), 128 DGH images from its BN statistics alone, W8A8 and W4A4 with pdquant,
    evaluated on the held-out digits. An ImageNet-size model (e.g. --model efficientnet_lite0) gets 64
    images, the cpu presets and W8A8 + W4.5A8-mixed (Lite0: 12 min on 2 cores). Every option of the
    stage commands is a config key (README 'toolchain run'); flags and --set override the file.
    Everything goes into one run directory: the models, calibration.npz, config.resolved.yaml,
    report.json, report.md with its plots, run.log.

    \b
    Exit codes: 0 success; 2 bad config or input (nothing is left behind); 3 an accuracy gate failed
    (the run directory is kept: its report says which); 1 internal error. A stopped run (Ctrl-C, a
    kill) keeps its run directory: the same command with --resume continues it.

    \b
    Examples:
      toolchain run
      toolchain run pipeline.yaml --run-dir runs/nightly --overwrite --max-drop 0.02
      toolchain run --model resnet20.onnx --calib calib.npz --eval-data test.tar.gz --set quantize.1.preset=thorough
      toolchain run pipeline.yaml --json --quiet | jq .gates
      toolchain run --model efficientnet_lite0 --eval-data ../shared/datasets/imagenet-sample-500.tar
      toolchain run --model efficientnet_lite0 --eval-data ../shared/datasets/imagenet-sample-500.tar --resume
    """
    # start-up time: the library (PIL, torch) loads when a run starts, not with `toolchain --help`
    from toolchain import api
    from toolchain.pipeline.config_io import apply_overrides, config_from_mapping, read_config_file
    from toolchain.pipeline.report import summary_table

    if (os.environ.get("WORLD_SIZE") or "1") != "1":  # every process would run the whole job into one folder
        raise ConfigError("toolchain run is one process; torchrun scales out its stages: run `torchrun ... -m "
                          "toolchain.cli generate|quantize ...` and pass the results with --calib or model:")
    raw = read_config_file(config_file) if config_file else {}
    flags = _flag_overrides(model, run_dir, overwrite, calib, eval_data, min_top1, max_drop, min_agreement, seed, device,
                            threads)
    raw = apply_overrides(raw, [*flags, *assignments])
    config = config_from_mapping(raw, config_file or "the default config")
    name = Path(config_file).stem if config_file else "default"
    result = api.run(config, config_name=name, progress=progress_wanted(), resume=resume)
    if as_json:
        click.echo(json.dumps({"run_dir": str(result.run_dir), "passed": result.passed, **result.report}, default=float))
    elif not quiet():
        say(summary_table(result.run_report))
        say(f"report: {result.run_dir / 'report.md'} ({result.run_report.timing.total_s or 0:.0f} s)")
    if not result.passed:
        raise GateFailed(f"accuracy gate failed: {'; '.join(result.failures)}; the run is kept in {result.run_dir} "
                         "(report.md says more)")
