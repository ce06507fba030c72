"""The `toolchain` command line. It parses options, calls toolchain.api and prints; nothing more.

Usage:
    toolchain run                                   # the main job on the built-in default model
    toolchain run pipeline.yaml --set generate.n=512 --max-drop 0.02
    toolchain export resnet20_cifar10 -o resnet20.onnx
    toolchain inspect resnet20.onnx [--json]
    toolchain evaluate resnet20.onnx --data ../shared/datasets/cifar10-test-jpg.tar.gz [--json]
    toolchain stamp theirs.onnx --mean 0.5 --std 0.5 --input-size 28
    toolchain zoo

Every failure ends as one line on stderr and a non-zero exit code, never a traceback (cli_errors.py):
a usage error or bad input exits 2 with what to fix; a failed accuracy gate exits 3; an internal error
exits 1 naming the log file with its traceback (`toolchain --debug ...` prints it); Ctrl-C exits 130.
Every command takes --json, --quiet and --log-level (cli_output.py) and never prompts.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from toolchain import __version__
from toolchain.cli.errors import EXIT_CODES_TEXT, handle_errors
from toolchain.cli.options import execution_from, execution_options, preprocessing_options, preprocessing_overrides
from toolchain.cli.output import output_options, progress_wanted, say
from toolchain.cli.quantize import quantize_command
from toolchain.cli.run import run_command
from toolchain.cli.text import format_summary
from toolchain.core.execution import prefer_passive_waiting

if TYPE_CHECKING:  # start-up time: generate's modules load numpy; the CLI imports only what --help needs
    from toolchain.generate.outputs import GenerateOutcome

_GROUP_HELP = f"""ONNX post-training quantization with synthetic calibration data.

    \b
    Start with:
      toolchain run                      # the whole job on the built-in digits model: W8A8 and W4A4 pdquant
      toolchain run pipeline.yaml        # the same from your config (README 'toolchain run')
      toolchain zoo                      # the models `export` knows by name

    {EXIT_CODES_TEXT}
    """


@click.group(help=_GROUP_HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="toolchain")
@click.option("--debug", is_flag=True, help="Print the traceback of an internal error (it always goes to a log file).")
def cli(debug: bool) -> None:
    pass


@cli.command("zoo")
@output_options()
@handle_errors
def zoo_command(as_json: bool) -> None:
    """List the models `toolchain export` knows by name."""
    from toolchain.export.zoo import DEFAULT_MODEL, ZOO  # deferred: torch loads only when this runs (start-up time)

    if as_json:
        click.echo(json.dumps([{"name": name, "description": entry.description, "default": name == DEFAULT_MODEL}
                               for name, entry in ZOO.items()]))
        return
    for name, entry in ZOO.items():
        marker = " (default)" if name == DEFAULT_MODEL else ""
        say(f"{name:<20} {entry.description}{marker}")


@cli.command("export")
@click.argument("model")
@click.option("--weights", type=click.Path(dir_okay=False), help="State dict (.pt/.pth/.th or .npz) to load.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output .onnx path (default: MODEL.onnx).")
@click.option("--opset", type=click.IntRange(17, 25), default=17, show_default=True, help="ONNX opset.")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True,
              help="torch.onnx exporter: TorchScript (BN kept by TrainingMode.PRESERVE) or dynamo (optimiser off "
                   "so BN stays; opset 18 or newer; needs onnxscript).")
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
@preprocessing_options
@output_options()
@handle_errors
def export_command(model: str, weights: str | None, output: str | None, opset: int, exporter: str, overwrite: bool,
                   as_json: bool, **kwargs: Any) -> None:
    """Export MODEL to ONNX with its BatchNormalization nodes kept.

    MODEL is a zoo name (see `toolchain zoo`) or package.module:factory. The model's preprocessing
    (mean, std, input size, class names) is stored in the file's metadata; give it with the options
    below for models outside the zoo. The export verifies itself with onnx.checker and onnxruntime.

    \b
    Examples:
      toolchain export resnet20_cifar10 -o resnet20.onnx
      toolchain export resnet56_cifar10 --weights ../shared/weights/resnet56-4bfd9763.th -o r56.onnx
      toolchain export mypkg.nets:small_net --mean 0.5 --std 0.25 --input-size 64 -o small.onnx
      toolchain export mobilenet_v3_cifar10 --exporter dynamo -o mnv3.onnx
    """
    from toolchain import api  # deferred: PIL loads only when this runs (start-up time)

    report = api.export_model(model, output, weights, preprocessing_overrides(kwargs), opset, overwrite, exporter)
    if as_json:

        click.echo(json.dumps({**asdict(report), "path": str(report.path)}))
        return
    say(
        f"wrote {report.path}: {report.num_nodes} nodes, {report.num_batchnorm} BatchNormalization kept, opset {report.opset}; "
        f"verified: onnx.checker ok, onnxruntime vs PyTorch max|diff|/max|ref| = {report.relative_diff:.1e} "
        f"<= {report.tolerance:.0e} on {report.samples} random inputs"
    )


@cli.command("inspect")
@click.argument("model", type=click.Path())
@output_options()
@handle_errors
def inspect_command(model: str, as_json: bool) -> None:
    """Show MODEL.onnx's inputs, op histogram, BatchNormalization layers and quantizable layers.

    \b
    Examples:
      toolchain inspect resnet20.onnx
      toolchain inspect resnet20.onnx --json | python -c "import json,sys; print(json.load(sys.stdin)['num_batchnorm'])"
    """
    from toolchain import api  # deferred: PIL loads only when this runs (start-up time)

    summary = api.inspect_model(model)
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
    else:
        say(format_summary(summary, model))


@cli.command("stamp")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write a copy here instead of changing MODEL in place.")
@preprocessing_options
@output_options()
@handle_errors
def stamp_command(model: str, output: str | None, as_json: bool, **kwargs: Any) -> None:
    """Store input preprocessing in MODEL.onnx's metadata (for models exported elsewhere).

    \b
    Example:
      toolchain stamp theirs.onnx --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --input-size 224 \\
          --crop-fraction 0.875 --class-names @classes.txt
    """
    from toolchain import api  # deferred: PIL loads only when this runs (start-up time)

    pre = api.stamp_model(model, preprocessing_overrides(kwargs), output)
    if as_json:
        click.echo(json.dumps({"path": str(output or model), "preprocessing": pre.to_dict()}))
        return
    say(f"stamped {output or model}: {json.dumps(pre.to_dict())}")


@cli.command("evaluate")
@click.argument("model", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help="ImageFolder directory, .tar/.tar.gz of one, or .npz (images, labels).")
@click.option("--reference", type=click.Path(), help="A second model (e.g. the FP32 one): report top-1 agreement with it.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate a random sample of N images (see --seed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --limit sample.")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Images per run [default: 256, fewer for large inputs: 32 MiB of input, 55 images at 224x224].")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="onnxruntime intra-op threads.")
@click.option("--providers", help="onnxruntime execution providers in order, e.g. cuda,cpu [default: cpu].")
@click.option("--runtime", type=click.Choice(["ort", "reference", "openvino", "qnn"]), default="ort", show_default=True,
              help="Runtime that runs MODEL: onnxruntime, reference (onnxruntime without graph optimisation: the file's exact "
                   "Q/DQ semantics), OpenVINO (CPU) or QNN HTP (CPU fallback off; an emulator on x86). openvino and qnn "
                   "need their extras.")
@preprocessing_options
@output_options()
@handle_errors
def evaluate_command(model: str, data: str, reference: str | None, limit: int | None, seed: int, batch_size: int | None,
                     threads: int, providers: str | None, runtime: str, as_json: bool, **kwargs: Any) -> None:
    """Top-1/top-5 accuracy of MODEL.onnx in onnxruntime (or --runtime) on labelled images.

    The model's stored preprocessing is applied (override it, or give it for foreign models, with the
    options below). Class folders are matched to the model's class names.

    \b
    Examples:
      toolchain evaluate resnet20.onnx --data ../shared/datasets/cifar10-test-jpg.tar.gz
      toolchain evaluate r20_w4a4.onnx --data test.tar.gz --reference resnet20.onnx --limit 1000 --json
      toolchain evaluate r20_w8a8_ov.onnx --data test.tar.gz --runtime openvino
      toolchain evaluate r20_qnn.onnx --data test.tar.gz --runtime qnn --limit 500    # HTP emulator: slow
    """
    from toolchain import api  # deferred: PIL loads only when this runs (start-up time)

    result = api.evaluate_model(model, data, reference, limit, batch_size, threads, seed, preprocessing_overrides(kwargs),
                                providers=providers, runtime=runtime, progress=progress_wanted())
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    agreement = f", top-1 agreement with {reference}: {result.agreement:.4f}" if result.agreement is not None else ""
    say(f"{model}: top-1 {result.top1:.4f}, top-5 {result.top5:.4f} on {result.n} images{agreement} "
               f"({result.images_per_second:.0f} images/s in {_RUNTIME_NAMES[runtime]}, {threads} threads)")


_RUNTIME_NAMES = {"ort": "onnxruntime", "reference": "onnxruntime (unoptimised reference)", "openvino": "OpenVINO",
                  "qnn": "QNN HTP"}


cli.add_command(quantize_command)
cli.add_command(run_command)


@cli.command("generate")
@click.argument("model", type=click.Path())
@click.option("--method", type=click.Choice(["dgh", "fdda", "bns", "gaussian", "real"]), default="dgh", show_default=True,
              help="dgh: zero-shot; fdda: few-shot (needs --data); bns: ZeroQ-style baseline; gaussian: noise floor; real: sample --data.")
@click.option("-n", "n", type=int, default=256, show_default=True, help="Number of calibration images.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output .npz [default: calib_data/MODEL_METHODN_sSEED.npz].")
@click.option("--preset", "preset_name", type=click.Choice(["fast", "cpu", "default", "paper"]), default="default", show_default=True,
              help="paper: the papers' settings; default: best accuracy per CPU-minute measured on ResNet-20; "
                   "cpu: ImageNet-size models on a few cores (100 iterations, batch 32); fast: tests.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data", type=click.Path(), help="Labelled real images (fdda: the few-shot set; real: the pool to sample).")
@click.option("--per-class", type=click.IntRange(min=1), help="fdda: real images per class for the class centres (default 1).")
@click.option("--fdda-classes", type=click.Choice(["all", "present"]),
              help="fdda: all = a centre for every class of the model (the paper; default); present = only the "
                   "classes --data has images of (e.g. a 500-class sample of ImageNet).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per optimisation batch (preset's value by default).")
@click.option("--iterations", type=click.IntRange(min=1), help="Optimisation steps per image (preset's value by default).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUTPUT.ckpt.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@preprocessing_options
@execution_options()
@output_options()
@handle_errors
def generate_command(model: str, method: str, n: int, output: str | None, preset_name: str, seed: int, data: str | None,
                     per_class: int | None, fdda_classes: str | None, batch_size: int | None, iterations: int | None,
                     resume: bool, overwrite: bool, as_json: bool, **kwargs: Any) -> None:
    """Synthesise calibration images for MODEL.onnx from its BatchNormalization statistics.

    The images are optimised through the torch executor so that the statistics at every
    BatchNormalization node match the stored running statistics: the ONNX file alone is enough.
    Scale out with torchrun: each process optimises its share of the images and the global BN
    moments are all-reduced, so K processes produce one calibration set.

    \b
    Examples:
      toolchain generate resnet20.onnx --method dgh -n 256 -o calib_data/dgh256.npz
      toolchain generate resnet20.onnx --method fdda -n 256 --data few_shot/ -o calib_data/fdda256.npz
      toolchain generate lite0.onnx --method fdda -n 64 --preset cpu --data imagenet-sample-500.tar --fdda-classes present
      torchrun --nproc-per-node 2 -m toolchain.cli generate resnet20.onnx -n 1024 -o calib_data/dgh1024.npz
      toolchain generate resnet18.onnx -n 1024 --device cuda -o calib_data/r18_dgh1024.npz
    """
    from toolchain import api  # deferred: PIL loads only when this runs (start-up time)
    from toolchain.core.distributed import distributed_session, exit_process  # deferred: torch loads only when this runs (start-up time)

    execution = execution_from(kwargs)
    with distributed_session() as distributed:  # destroyed on exit, so a torchrun run exits 0 after writing
        outcome = api.generate_calibration(model, method, n, output, preset_name, seed, data, batch_size, iterations,
                                           per_class, resume, overwrite, preprocessing_overrides(kwargs),
                                           distributed=distributed, execution=execution, progress=progress_wanted(),
                                           fdda_classes=fdda_classes)
    if outcome.path is not None and as_json:
        click.echo(json.dumps({"path": str(outcome.path), **{k: v for k, v in outcome.manifest.items() if k != "config"}},
                              default=str))
    elif outcome.path is not None:
        _print_generated(outcome, n, method, preset_name, seed)
    if distributed is not None:
        exit_process(0)  # a torchrun worker skips interpreter teardown (see datagen.distributed.exit_process)


def _print_generated(outcome: GenerateOutcome, n: int, method: str, preset_name: str, seed: int) -> None:
    losses = outcome.manifest.get("losses", {}).get("final")
    loss_text = f", final BN distance {losses['bn_distance']:.4g}" if isinstance(losses, dict) and "bn_distance" in losses else ""
    say(f"wrote {outcome.path}: {n} images, method {method}"
               f"{', preset ' + preset_name if method in ('dgh', 'fdda', 'bns') else ''}, seed {seed}{loss_text}, "
               f"{outcome.manifest.get('wall_time_s', 0):.1f} s")


def main() -> None:
    """Console-script entry point."""

    prefer_passive_waiting()  # before any command imports torch (its OpenMP runtime reads this once)
    cli(prog_name="toolchain")


if __name__ == "__main__":
    main()
