"""`toolchain quantize`: the quantizer from the command line (options -> QuantConfig + Execution -> api).

Usage:
    toolchain quantize resnet20.onnx --calib calib_data/dgh256.npz --w-bits 4 --a-bits 4 --reconstruct pdquant -o r20.onnx
    torchrun --nproc-per-node 2 -m toolchain.cli quantize ...     # reconstruction shared by 2 processes
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from toolchain.cli.errors import handle_errors
from toolchain.cli.options import execution_from, execution_options, preprocessing_options, preprocessing_overrides
from toolchain.cli.output import output_options, progress_wanted, say, warn
from toolchain.quantize.reconstruct.config import PRESETS, ReconConfig
from toolchain.quantize.report_types import QuantReport, TargetVerdict
from toolchain.quantize.targets import TARGETS

if TYPE_CHECKING:  # start-up time: the quantizer's modules load numpy and onnx; the CLI imports only what --help needs
    from toolchain.quantize.config import QuantConfig
    from toolchain.quantize.outputs import QuantizeOutcome


@click.command("quantize")
@click.argument("model", type=click.Path())
@click.option("--calib", required=True, type=click.Path(),
              help="Calibration .npz (float32 'inputs', see calib_data/README.md) or an image dataset (folder, .tar.gz, .npz of images).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="QDQ model to write; the report goes to OUTPUT's .report.json.")
@click.option("--w-bits", type=int, default=8, show_default=True,
              help="Weight bits: 2, 3, 4 or 8 (symmetric, per channel; 3 bits are held in INT4); each --target supports "
                   "some of them.")
@click.option("--a-bits", type=int, default=8, show_default=True,
              help="Activation bits: 2, 4, 8 or 16 (per tensor; 16: uint16, --target qnn).")
@click.option("--calibrator", type=click.Choice(["minmax", "percentile", "mse"]),
              help="How ranges are chosen [default: mse; weights keep their exact range at 8 bits].")
@click.option("--percentile", type=float, default=99.99, show_default=True, help="Upper percentile of the percentile calibrator.")
@click.option("--target", type=click.Choice(list(TARGETS)), default="ort-x86", show_default=True,
              help="Runtime profile: types, symmetry, bias, Q/DQ placement and shapes that runtime turns into integer "
                   "kernels (README 'Targets'): ort-x86 (uint8), ort-arm (int8), openvino, qnn (HTP: uint8/uint16, "
                   "static batch), tensorrt (symmetric int8, Q/DQ on layer inputs, float bias).")
@click.option("--batch", type=click.IntRange(min=1),
              help="Fix the model's batch dimension to this size [default: dynamic; 1 for --target qnn].")
@click.option("--first-last-8bit", is_flag=True, help="Academic setting: first/last layer weights at 8 bits, output in float.")
@click.option("--low-bit-storage", type=click.Choice(["ort", "native"]), default="ort", show_default=True,
              help="native: INT4/UINT4/INT2/UINT2 types; ort: containers onnxruntime 1.32 loads with default optimisations.")
@click.option("--reduce-range", is_flag=True,
              help="8-bit weights in 7 bits, for x86 CPUs without VNNI whose u8s8 kernels saturate (as onnxruntime's "
                   "reduce_range).")
@click.option("--weight-rounding", type=click.Choice(["gptq", "nearest"]),
              help="How weights are rounded [default: gptq: rounding errors compensated through each layer's inputs; "
                   "EfficientNet-Lite0 W4A8 on 64 DGH images 66.6 %% top-1 against 13.0 %% to nearest]. With "
                   "--reconstruct, AdaRound learns the rounding: gptq then makes it start from GPTQ's integers.")
@click.option("--calib-limit", type=click.IntRange(min=1),
              help="Images drawn from an image dataset [default: 512], or the first N inputs of a calibration .npz [default: all].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration sample and of reconstruction.")
@click.option("--reconstruct", type=click.Choice(["none", "brecq", "pdquant"]), default="none", show_default=True,
              help="After calibration: brecq = AdaRound + QDrop per unit; pdquant = brecq + prediction-difference loss, "
                   "learned activation step sizes and distribution correction.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="default", show_default=True,
              help="Reconstruction budget: paper = PD-Quant's (20k iterations per unit); thorough = 3000 iterations per "
                   "unit, the most accurate budget measured on ResNet-20 W4A4 zero-shot (79.95 % over 3 seeds, with 1024 calibration images; "
                   "1-2 h there on 2 cores); default = best accuracy per "
                   "CPU-minute measured on ResNet-20 (about 3 min there on 2 cores); cpu = ImageNet-size models on a few cores "
                   "(100 iterations per unit, batch 8: ResNet-18 @224 W4A4 in 24 min on 2 cores); fast = a smoke test, 6 iterations "
                   "per unit (3-8 s on the small family models of bench/families.py).")
@click.option("--recon-iterations", type=click.IntRange(min=1), help="Iterations per unit (the preset's by default).")
@click.option("--recon-batch-size", type=click.IntRange(min=1), help="Reconstruction batch size (the preset's by default).")
@click.option("--pd-weight", type=click.FloatRange(min=0.0, min_open=True),
              help="pdquant: weight of the prediction-difference term [default: 10 (PD-Quant's) when every weight "
                   "has >= 4 bits, 1 below: measured on ResNet-20, see the README].")
@click.option("--no-qdrop", is_flag=True, help="Ablation: switch QDrop off.")
@click.option("--no-pd", is_flag=True, help="Ablation (pdquant): switch the prediction-difference term off.")
@click.option("--no-dc", is_flag=True, help="Ablation (pdquant): switch distribution correction off.")
@click.option("--no-learn-scales", is_flag=True, help="Ablation (pdquant): keep the calibrator's activation step sizes.")
@click.option("--resume", is_flag=True,
              help="Continue a reconstruction that stopped (divergence, crash, Ctrl-C) from OUTPUT.ckpt, "
                   "which keeps the finished units; give the same model, calibration set and bits.")
@click.option("--weight-bits-budget", type=click.FloatRange(min=0, min_open=True),
              help="Mixed precision: each layer's weight bits from --w-bits-choices so that the average over all "
                   "weights (counted by parameters) is at most this, e.g. 3.0; chosen by each layer's measured "
                   "prediction difference on the calibration set (README 'Mixed precision').")
@click.option("--size-budget", help="Mixed precision by size: the weights in at most this many bytes, e.g. 120KB or 1.5M.")
@click.option("--w-bits-choices", callback=lambda ctx, param, value: _bit_list(value),
              help="Candidate weight bits for a budget, e.g. 2,4,8 [default: the target's among 2, 3, 4, 8; 3-bit "
                   "candidates measured +3.2 points at 2.5 bits on ResNet-20 W?A4, 3 seeds].")
@click.option("--sensitivity-rounding", type=click.Choice(["nearest", "compensated"]),
              help="How a layer is rounded while its sensitivity to a bit budget is measured: to nearest, or "
                   "compensated by its input Hessian (GPTQ-style, as reconstruction recovers it) [default: compensated].")
@click.option("--a-bits-budget", type=click.FloatRange(min=0, min_open=True),
              help="Mixed precision of activations: each activation tensor's bits from --a-bits-choices so that the "
                   "mean over all activation values (per image, each tensor counted by its size) is at most this, "
                   "e.g. 5.0; chosen by each tensor's measured prediction difference (README 'Mixed precision').")
@click.option("--a-bits-choices", callback=lambda ctx, param, value: _bit_list(value),
              help="Candidate activation bits for --a-bits-budget, e.g. 2,4,8 [default: 4,8; ort-x86 and ort-arm, "
                   "the targets that run tensors of different activation widths side by side].")
@click.option("--require-all-quantized", is_flag=True, help="Fail when an op has no quantization rule (default: warn, leave it in float).")
@click.option("--require-full-integer", is_flag=True,
              help="Fail (exit 2, no output) unless onnxruntime runs every compute op on integer kernels; the message lists the float ops.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT and its report if they exist.")
@preprocessing_options
@execution_options(reconstruction=True, providers=True)
@output_options()
@handle_errors
def quantize_command(model: str, calib: str, output: str, w_bits: int, a_bits: int, calibrator: str | None, percentile: float,
                     target: str, batch: int | None, first_last_8bit: bool, low_bit_storage: str, reduce_range: bool, weight_rounding: str | None,
                     calib_limit: int | None,
                     seed: int,
                     reconstruct: str, preset: str, recon_iterations: int | None, recon_batch_size: int | None,
                     pd_weight: float | None, no_qdrop: bool, no_pd: bool, no_dc: bool, no_learn_scales: bool, resume: bool,
                     weight_bits_budget: float | None, size_budget: str | None, w_bits_choices: tuple[int, ...] | None,
                     sensitivity_rounding: str | None, a_bits_budget: float | None, a_bits_choices: tuple[int, ...] | None,
                     require_all_quantized: bool, require_full_integer: bool, overwrite: bool, as_json: bool, **kwargs: Any) -> None:
    """Quantize every layer of MODEL.onnx (first and last included) into a QDQ model.

    BN is folded after its statistics are read; weights are stored as integers behind
    DequantizeLinear, activations get Q->DQ (the network output too), so onnxruntime runs the model on
    integer kernels at 8 bits. With --reconstruct, weight rounding (and for pdquant the activation step
    sizes) are then learned unit by unit (stem, residual blocks, final layer, found from the graph) and
    written into the same QDQ model; OUTPUT.ckpt keeps the finished units meanwhile, so a run that
    stops (divergence, crash, Ctrl-C) continues with --resume. A report with per-layer bits, scales, zero points, SQNR against
    FP32, onnxruntime's fusion coverage and per-unit losses is written next to OUTPUT.

    \b
    Examples:
      toolchain quantize resnet20.onnx --calib ../shared/datasets/cifar10-train-jpg.tar.gz -o r20_w8a8.onnx
      toolchain quantize resnet20.onnx --calib calib_data/dgh256.npz --w-bits 4 --a-bits 4 -o r20_w4a4.onnx
      toolchain quantize resnet20.onnx --calib calib_data/dgh256.npz --w-bits 4 --a-bits 4 --reconstruct pdquant -o r20_pd.onnx
      toolchain quantize resnet20.onnx --calib calib_data/dgh1024.npz --w-bits 4 --a-bits 4 --reconstruct pdquant \
          --preset thorough -o r20_pd.onnx     # the most accurate budget measured (1-2 h on 2 cores)
      toolchain quantize resnet20.onnx --calib calib_data/dgh256.npz --target qnn --a-bits 16 -o r20_qnn_w8a16.onnx
      toolchain quantize resnet20.onnx --calib calib_data/dgh256.npz --a-bits 4 --weight-bits-budget 3 \
          --reconstruct pdquant -o r20_mixed.onnx     # per-layer weight bits, 3.0 on average
      toolchain quantize resnet20.onnx --calib calib_data/dgh256.npz --w-bits 4 --a-bits-budget 5 \
          --reconstruct pdquant -o r20_a_mixed.onnx     # per-tensor activation bits (4 or 8), 5.0 on average
      toolchain quantize ...same options... --resume     # after a stop: continues from r20_pd.onnx.ckpt
      toolchain quantize r18.onnx --calib calib_data/dgh1024.npz --w-bits 4 --a-bits 4 --reconstruct pdquant \
          --device cuda --cache-budget 8G -o r18_pd.onnx
      torchrun --nproc-per-node 2 -m toolchain.cli quantize resnet20.onnx --calib calib_data/dgh256.npz \
          --w-bits 4 --a-bits 4 --reconstruct pdquant -o r20_pd.onnx    # 2 processes share the reconstruction
    """
    from toolchain import api  # deferred: PIL loads only when this runs (start-up time)
    from toolchain.core.distributed import distributed_session, exit_process  # deferred: torch loads only when this runs (start-up time)
    from toolchain.pipeline.config import QuantizeSpec  # deferred: PIL, torch load only when this runs (start-up time)

    # The options map one to one onto `toolchain run`'s quantize entries: one translation for both.
    spec = QuantizeSpec(w_bits=w_bits, a_bits=a_bits, calibrator=calibrator, percentile=percentile, target=target,
                        batch=batch, first_last_8bit=first_last_8bit, low_bit_storage=low_bit_storage,
                        reduce_range=reduce_range, weight_rounding=weight_rounding, calib_limit=calib_limit, seed=seed, reconstruct=reconstruct,
                        preset=preset, recon_iterations=recon_iterations, recon_batch_size=recon_batch_size,
                        pd_weight=pd_weight, no_qdrop=no_qdrop, no_pd=no_pd, no_dc=no_dc, no_learn_scales=no_learn_scales,
                        require_all_quantized=require_all_quantized, require_full_integer=require_full_integer,
                        weight_bits_budget=weight_bits_budget, size_budget=size_budget, w_bits_choices=w_bits_choices,
                        sensitivity_rounding=sensitivity_rounding, a_bits_budget=a_bits_budget,
                        a_bits_choices=a_bits_choices)
    config = spec.quant_config()
    execution = execution_from(kwargs)
    overrides = preprocessing_overrides(kwargs)
    with distributed_session() as distributed:  # destroyed on exit, so a torchrun run exits 0 after writing
        outcome = api.quantize_model(model, calib, output, config, calib_limit, seed, overwrite, overrides,
                                     resume=resume, execution=execution, distributed=distributed,
                                     progress=progress_wanted())
    if outcome is None:  # a torchrun rank other than 0: rank 0 wrote and reports
        exit_process(0)
    _print_quantized(outcome, config, as_json)
    if distributed is not None:
        exit_process(0)  # a torchrun worker skips interpreter teardown (see datagen.distributed.exit_process)


def _bit_list(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(sorted({int(v) for v in value.replace(" ", "").split(",") if v}))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated bit-widths such as 2,4,8, got {value!r}") from None


def _print_quantized(outcome: QuantizeOutcome, config: QuantConfig, as_json: bool) -> None:
    from toolchain.runtimes.coverage import float_ops_text  # deferred: onnxruntime loads only when this runs (start-up time)

    recon = config.reconstruction
    for warning in outcome.warnings:
        warn(warning)
    report = outcome.typed
    summary = report.summary
    if as_json:
        click.echo(json.dumps({**vars(summary), "path": str(outcome.path), "report": str(outcome.report_path)}))
        return
    fusion = report.fusion
    macs = f", {fusion.mac_coverage:.3f} of MACs" if fusion.mac_coverage is not None else ""
    sqnr = summary.output_sqnr_db
    sqnr_text = f"output SQNR {sqnr:.1f} dB" + (" (network output in float: --first-last-8bit)" if config.first_last_8bit else "")
    mixed = report.mixed_precision
    weights = f"W{mixed.average_bits:.2f}mixed" if mixed is not None else f"W{config.w_bits}"
    mixed_text = (f" (weights {mixed.size_bytes:,} bytes, bits per layer in the report; sensitivity measured in "
                  f"{mixed.sensitivity_seconds:.0f} s)" if mixed is not None else "")
    mixed_act = report.mixed_precision_activations
    activations = f"A{mixed_act.average_bits:.2f}mixed" if mixed_act is not None else f"A{config.a_bits}"
    if mixed_act is not None:
        mixed_text += f" (activation bits per tensor in the report; measured in {mixed_act.sensitivity_seconds:.0f} s)"
    rounding = _recon_text(recon, report) if recon.enabled else f", {config.effective_weight_rounding} rounding"
    say(
        f"wrote {outcome.path}: {weights}{activations} ({report.calibration.activation_calibrator}"
        f"{rounding}), {summary.quantized_layers} layers quantized{mixed_text}, "
        f"{sqnr_text} on {report.calibration.sqnr_samples} calibration inputs; "
        f"{'' if config.target == 'ort-x86' else 'onnxruntime x86 '}integer coverage {summary.fusion_coverage:.2f} of ops{macs} "
        f"(float ops left: {float_ops_text(fusion)}){_target_text(report.target)}; report {outcome.report_path}"
    )


def _recon_text(recon: ReconConfig, report: QuantReport) -> str:
    """", pdquant cpu", and how many units kept their starting rounding because the learned one measured worse."""
    units = (report.reconstruction.units if report.reconstruction is not None else None) or []
    kept = sum(u.kept == "start" for u in units)
    return f", {recon.method} {recon.preset_name}" + (f" ({kept} of {len(units)} units kept their start)" if kept else "")


def _target_text(verdict: TargetVerdict | None) -> str:
    """The target runtime's own verdict, for targets other than ort-x86 (whose verdict is the fusion report)."""
    if verdict is None or verdict.name == "ort-x86":
        return ""
    problems, runtime = verdict.layout_problems, verdict.runtime
    layout = f"layout: {len(problems)} problem(s), first: {problems[0]}" if problems else "layout ok"
    if runtime.coverage is not None:
        state = "every node on HTP" if runtime.on_htp else f"integer coverage {runtime.coverage:.2f}"
        if runtime.agreement_db is not None:
            state += f", SQNR {runtime.agreement_db} dB against the reference"
        if not runtime.verified and runtime.why is not None:
            state += " (NOT VERIFIED: see the warning above)"
        return f"; {verdict.name}: {layout}, {runtime.runtime} {state}"
    return f"; {verdict.name}: {layout}, not run here ({runtime.why})"
