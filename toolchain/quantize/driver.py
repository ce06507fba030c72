"""The quantizer pipeline: clean up -> fold BN -> annotate -> calibrate -> [reconstruct] -> materialise Q/DQ -> report.

Usage:
    result = quantize(float_model, calib_inputs, QuantConfig(w_bits=4, a_bits=4))
    result.model      # the QDQ onnx.ModelProto (onnx.checker-valid)
    result.report     # per-layer bits, scales, zero points, SQNR; fusion coverage; ops left in float
    result.warnings   # e.g. ops the quantizer has no rule for (left in float)
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

import toolchain
from toolchain.core.cpu import has_vnni
from toolchain.core.execution import Execution
from toolchain.errors import DataError, GraphError
from toolchain.onnxio.files import check_model, model_sha256
from toolchain.onnxio.graph import image_input
from toolchain.onnxio.preprocessing import read_preprocessing
from toolchain.quantize.annotate.placement import QuantPlan, annotate
from toolchain.quantize.calibrate.gptq import gptq_integers
from toolchain.quantize.calibrate.ranges import (
    Observation,
    activation_params,
    constant_observation,
    observe_activations,
    weight_calibrator,
    weight_params,
)
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.fold.prepare import prepare_float_model
from toolchain.quantize.fold.static_batch import check_batch, fix_batch
from toolchain.quantize.materialize.qdq import guard_bias_overflow, materialize
from toolchain.quantize.mixed_precision.apply import allocate_activation_bits, allocate_weight_bits
from toolchain.quantize.qparams import (
    QParams,
    weight_type,
)
from toolchain.quantize.report import build_report
from toolchain.quantize.report_sections import ActivationAllocationReport, WeightAllocationReport
from toolchain.quantize.report_types import QuantReport, ReconstructionReport, TargetVerdict
from toolchain.quantize.target_check import layout_problems, verify_on_runtime
from toolchain.runtimes.coverage import float_ops_text

logger = logging.getLogger(__name__)
# x86 CPU targets whose u8 x s8 kernels saturate without VNNI (vpmaddubsw pairs overflow int16): the runtime's name
_X86_CPU_TARGETS = {"ort-x86": "onnxruntime", "openvino": "OpenVINO"}
# Calibration inputs GPTQ's layer Hessians are estimated on: each Hessian also caps its patches at
# gptq.MAX_COLUMNS, so more images add cost, not precision (Lite0: 64 s on 256 images, 2 cores).
GPTQ_SAMPLES = 256
SYNTHETIC_METHODS = ("dgh", "fdda", "bns", "gaussian")  # calibration manifests' methods that are not real images
# The top of a network output's minmax range on synthetic data is multiplied by this. Synthesised images are
# less confident than photographs (largest logit 19.5 against 36.5 on MobileNetV2's 500 photographs, 11.0
# against 14.4 on EfficientNet-Lite0), and a clipped top logit makes several classes tie at the top of the
# grid, which decides the argmax wrongly: the logits' quantizer alone cost MobileNetV2 3.8 points of
# agreement. With x2 the W8A8 zero-shot KL to FP32 drops 0.086 -> 0.024 (MobileNetV2) and 0.011 -> 0.006
# (Lite0); x1.5 measured the same (README, pretrained ImageNet models).
SYNTHETIC_OUTPUT_HEADROOM = 2.0
_AGREEMENT_INPUTS = 8  # calibration inputs the target runtime runs against the reference (seconds on the HTP emulator)

QUANTIZED_OP_TYPES = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                      "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "MatMulNBits"}


@dataclass(frozen=True, eq=False)
class QuantResult:
    """A quantized model, its report (the JSON form, as NAME.report.json holds it; `typed`: the same as a
    QuantReport) and the warnings raised on the way."""

    model: onnx.ModelProto
    report: dict
    warnings: tuple[str, ...]
    typed: QuantReport


def check_not_quantized(model: onnx.ModelProto, source: str) -> None:
    found = sorted({node.op_type for node in model.graph.node if node.op_type in QUANTIZED_OP_TYPES})
    if found:
        raise GraphError(f"{source} is already quantized (it has {', '.join(found)} nodes); give the float model")


def check_calibration(model: onnx.ModelProto, inputs: np.ndarray, source: str) -> None:
    """Shape, dtype and finiteness of calibration inputs against the model's image input."""
    info = image_input(model, source)
    if inputs.size == 0 or inputs.ndim == 0 or inputs.shape[0] == 0:
        raise DataError("the calibration set is empty: give at least one image (--calib-limit >= 1) or a non-empty 'inputs' array")
    if inputs.dtype != np.float32:
        raise DataError(f"calibration inputs are {inputs.dtype}, the model input {info.name!r} takes float32: "
                        "store preprocessed float32 inputs (see calib_data/README.md)")
    expected = [d if isinstance(d, int) else None for d in info.shape]
    if inputs.ndim != 4 or any(e is not None and e != got for e, got in zip(expected[1:], inputs.shape[1:])):
        shown = ["N" if e is None else e for e in expected]
        raise DataError(f"calibration inputs have shape {list(inputs.shape)} but the model input {info.name!r} is {shown}")
    if isinstance(expected[0], int) and expected[0] > 0 and len(inputs) % expected[0]:
        raise DataError(f"{source} fixes its batch to {expected[0]} and the calibration set has {len(inputs)} inputs: "
                        f"give a multiple of {expected[0]} (--calib-limit), or re-export with a dynamic batch axis")
    bad_count, first = 0, None
    for start in range(0, len(inputs), 64):  # in chunks: a mask of the whole set would be its size again
        bad = ~np.isfinite(inputs[start:start + 64]).reshape(min(64, len(inputs) - start), -1)
        if bad.any():
            bad_count += int(bad.sum())
            first = first if first is not None else start + int(np.argwhere(bad.any(axis=1))[0][0])
    if bad_count:
        raise DataError(f"calibration inputs contain {bad_count} NaN/Inf values (first in sample {first}); "
                        "regenerate or clean the calibration set")


def is_synthetic(calib_info: dict | None) -> bool:
    """Whether the calibration manifest says the inputs were synthesised (toolchain generate, not real images)."""
    return (calib_info or {}).get("method") in SYNTHETIC_METHODS


def choose_parameters(float_model: onnx.ModelProto, plan: QuantPlan, calib: np.ndarray, config: QuantConfig,
                      progress: bool, execution: Execution | None = None,
                      input_range: tuple[float, float] | None = None,
                      synthetic: bool = False) -> tuple[dict[str, QParams], dict[str, QParams]]:
    """Calibrate activations (per root tensor) and weights (per channel).

    `input_range`: the range every image spans after preprocessing (Preprocessing.input_range); the network
    input is then quantized over it (widened to what the calibration inputs reach, if they go beyond).
    `synthetic`: the calibration inputs were synthesised (QuantConfig.activation_calibrator)."""
    execution = execution or Execution()
    calibrator = config.effective_calibrator
    roots = [t for t, spec in plan.activations.items() if spec.shared_with is None]
    observed = observe_activations(float_model, [t for t in roots if not plan.activations[t].constant], calib,
                                   config.calib_batch_size, config.samples_per_tensor, progress=progress,
                                   threads=execution.thread_count, providers=execution.providers)
    # only the initializers this function reads, decoded after onnxruntime let go of its copy (large models)
    needed = set(roots) | set(plan.weights) | {bias.tensor for bias in plan.biases.values()}
    initializers = {init.name: numpy_helper.to_array(init) for init in float_model.graph.initializer if init.name in needed}
    observed.update({t: constant_observation(initializers[t]) for t in roots if plan.activations[t].constant})
    image = image_input(float_model).name
    calibrators = {t: config.activation_calibrator(plan.activations[t].bits, synthetic) for t in roots}
    if input_range is not None and image in observed:
        # the images' own range, widened to what the inputs reach: clipping bright or dark pixels that a
        # (synthetic) sample never reached would distort real images in the very first layer
        seen = observed[image]
        observed[image] = Observation(min(input_range[0], seen.minimum), max(input_range[1], seen.maximum), seen.sample)
        calibrators[image] = "minmax"
    if synthetic:
        for root in synthetic_output_roots(float_model, plan, calibrators):
            seen = observed[root]
            observed[root] = Observation(seen.minimum, seen.maximum * SYNTHETIC_OUTPUT_HEADROOM, seen.sample)
    searching = tqdm(roots, desc=f"{config.calibrator_label(synthetic)} ranges", unit="tensor", file=sys.stderr,
                     disable=not progress)
    profile = config.profile
    act = {t: activation_params(observed[t], plan.activations[t], calibrators[t],
                                profile.activation_type(plan.activations[t].bits), config.percentile,
                                symmetric=profile.symmetric_activations) for t in searching}
    weights = {}
    for name, spec in plan.weights.items():
        qtype = weight_type(spec.bits, config.reduce_range)
        params = weight_params(initializers[name], spec.axis, qtype, weight_calibrator(calibrator, spec.bits),
                               max_scale_ratio=profile.max_weight_scale_ratio)
        for bias in (b for b in plan.biases.values() if b.weight == name):
            params = guard_bias_overflow(act[plan.root(bias.activation)], params, initializers[bias.tensor])
        weights[name] = params
    return act, weights


def quantize(model: onnx.ModelProto, calib: np.ndarray, config: QuantConfig, source: str = "model",
             calib_info: dict | None = None, progress: bool = True, checkpoint: Path | None = None,
             resume: bool = False, consume: bool = False, execution: Execution | None = None,
             distributed=None, inputs_checked: bool = False) -> QuantResult | None:
    """Quantize every layer of `model` with `calib` (float32 NCHW model inputs) as `config` says.

    With reconstruction and a `checkpoint` path, the finished units are saved there after each one;
    `resume=True` continues from that file (see reconstruct.resume). `consume=True`: `model` may be changed (it becomes
    the BN-folded float model), which saves a copy of it. `execution`: device, threads, cache budget and
    onnxruntime providers (not part of the result). `distributed` (torchrun): every rank calibrates on the
    whole set and reconstructs on its shard; rank 0 returns the result, the other ranks None.
    `inputs_checked=True`: the caller ran outputs.check_quantize_inputs on this model and `calib` (the calibration
    set is checked once per run, not once per quantized model).
    """
    execution = execution or Execution()
    if config.reconstruction.enabled:  # torch is imported only when reconstruction runs
        execution.apply_threads()
    start = time.perf_counter()
    _check_inputs(model, calib, config, source, inputs_checked)
    cleaned: list[onnx.ModelProto] | None = [] if config.reconstruction.enabled else None  # BN statistics for DC
    pre = read_preprocessing(model)  # before a consumed model becomes the folded one
    float_model, folded = prepare_float_model(model, config, cleaned, in_place=consume)
    config, plan, mixed_weights, mixed_activations = _plan(float_model, calib, config, progress, execution)
    saturates_here = config.target in _X86_CPU_TARGETS and not config.reduce_range and has_vnni() is False
    warnings = _plan_warnings(plan, config, source, len(calib), saturates_here)
    resume_point = _resume_point(float_model, calib, config, checkpoint, resume)
    act, weights = choose_parameters(float_model, plan, calib, config, progress, execution,
                                     input_range=pre.input_range() if pre is not None else None,
                                     synthetic=is_synthetic(calib_info))
    integers, recon_report = None, None
    if config.gptq_integers_needed:
        integers = gptq_integers(float_model, plan, weights, calib[:GPTQ_SAMPLES], execution.thread_count,
                                 progress=progress)
    if config.reconstruction.enabled:
        from toolchain.quantize.reconstruct.correction import bn_targets  # deferred: torch loads only when this runs (start-up time)
        from toolchain.quantize.reconstruct.engine import reconstruct  # torch is imported only when reconstruction runs

        assert cleaned is not None, "prepare_float_model kept the cleaned model for reconstruction"
        result = reconstruct(float_model, plan, act, weights, calib, config.reconstruction, bn_targets(cleaned[0]),
                             progress=progress, resume_point=resume_point, execution=execution,
                             distributed=distributed, start_integers=integers)
        if distributed is not None and distributed.rank != 0:
            return None  # every rank holds the same parameters: rank 0 materialises and reports
        act, weights, integers = result.activations, result.weights, result.weight_integers
        recon_report = ReconstructionReport(result.config.to_dict(), result.units, result.notes, result.seconds,
                                            result.cache, result.resumed_units)
        warnings.extend(result.notes)  # e.g. a region reconstructed layer by layer: the CLI prints these
    act = cap_to_fused_clips(float_model, plan, act)
    qdq = _materialize_checked(float_model, plan, act, weights, integers, config)
    report = build_report(float_model, qdq, plan, act, weights, calib, config, source, calib_info or {}, folded,
                          execution, progress)
    report = _complete_report(report, float_model, qdq, plan, calib, config, calib_info, source, execution, warnings,
                              saturates_here)
    report = replace(report, reconstruction=recon_report or ReconstructionReport(config.reconstruction.to_dict()),
                     mixed_precision=mixed_weights, mixed_precision_activations=mixed_activations,
                     seconds=round(time.perf_counter() - start, 3))
    return QuantResult(qdq, report.to_dict(), tuple(warnings), report)


def _check_inputs(model: onnx.ModelProto, calib: np.ndarray, config: QuantConfig, source: str,
                  inputs_checked: bool) -> None:
    check_not_quantized(model, source)
    if not inputs_checked:
        check_calibration(model, calib, source)
    if config.effective_batch is not None:
        check_batch(model, config.effective_batch, source)
    if config.reconstruction.enabled and len(calib) < config.reconstruction.batch_size:
        raise DataError(f"the calibration set has {len(calib)} images, fewer than the reconstruction batch size "
                        f"{config.reconstruction.batch_size}: give more images or a smaller --recon-batch-size")


def _plan(float_model: onnx.ModelProto, calib: np.ndarray, config: QuantConfig, progress: bool, execution: Execution
          ) -> tuple[QuantConfig, QuantPlan, WeightAllocationReport | None, ActivationAllocationReport | None]:
    """Annotate, then the mixed-precision allocations (weights, activations) when budgets are given: the config
    and plan they leave, and their report sections (None when not asked for)."""
    plan = annotate(float_model, config)
    weights = activations = None
    if config.bit_budget is not None:
        config, plan, weights = allocate_weight_bits(float_model, plan, calib, config, progress, execution)
    if config.act_budget is not None:  # independent of the weights' allocation: the additive objective splits
        config, plan, activations = allocate_activation_bits(float_model, plan, calib, config, progress, execution)
    return config, plan, weights, activations


def _plan_warnings(plan: QuantPlan, config: QuantConfig, source: str, calib_count: int,
                   saturates_here: bool) -> list[str]:
    """Ops left in float (an error with require_all_quantized), a CPU whose kernels saturate, calibration advice."""
    warnings = [f"no quantization rule for {op} node {name!r}: left in float" for name, op in plan.float_nodes]
    if warnings and config.require_all_quantized:
        listed = ", ".join(f"{op} {name!r}" for name, op in plan.float_nodes[:5])
        raise GraphError(f"{source}: {len(plan.float_nodes)} node(s) have no quantization rule ({listed}); "
                         "drop --require-all-quantized to leave them in float")
    # full-range 8-bit weights on an x86 CPU target, quantized on a CPU without VNNI: its kernels saturate here
    if saturates_here and 8 in {spec.bits for spec in plan.weights.values()}:
        warnings.append(f"this CPU has no VNNI: {_X86_CPU_TARGETS[config.target]}'s 8-bit integer kernels saturate here "
                        "with full-range weights (ResNet-20 W8A8: onnxruntime 92.3 % top-1 agreement with the QDQ "
                        "semantics, OpenVINO 13 dB SQNR); pass --reduce-range if the model will run on such CPUs "
                        "(99.9 %, 32 dB)")
    advice = config.reconstruction.calibration_advice(calib_count)
    if advice:
        warnings.append(advice)
    return warnings


def _materialize_checked(float_model: onnx.ModelProto, plan: QuantPlan, act: dict[str, QParams],
                         weights: dict[str, QParams], integers: dict[str, np.ndarray] | None,
                         config: QuantConfig) -> onnx.ModelProto:
    qdq = materialize(float_model, plan, act, weights, config.low_bit_storage, integers,
                      integer_pads=config.profile.integer_domain_pad)
    qdq.producer_name, qdq.producer_version = "toolchain", toolchain.__version__
    try:
        check_model(qdq)
    except onnx.checker.ValidationError as err:  # a bug in the quantizer, not the user's input
        raise RuntimeError(f"the quantized graph fails onnx.checker: {err}") from err
    return qdq


def _complete_report(report: QuantReport, float_model: onnx.ModelProto, qdq: onnx.ModelProto, plan: QuantPlan,
                     calib: np.ndarray, config: QuantConfig, calib_info: dict | None, source: str,
                     execution: Execution, warnings: list[str], saturates_here: bool) -> QuantReport:
    """What the driver knows beyond build_report: the calibrator's label, the synthetic-output headroom, the
    full-integer requirement, a fixed batch, the target's verdict (its failure a warning), the warnings."""
    headroom = None
    if is_synthetic(calib_info):
        headroom = {"tensors": synthetic_output_roots(float_model, plan, {t: config.activation_calibrator(s.bits, True)
                                                                          for t, s in plan.activations.items()}),
                    "factor": SYNTHETIC_OUTPUT_HEADROOM}
    calibration = replace(report.calibration, activation_calibrator=config.calibrator_label(is_synthetic(calib_info)),
                          weight_rounding=config.effective_weight_rounding, output_headroom=headroom)
    fusion = report.fusion
    if config.require_full_integer and not fusion.fully_integer:
        listed = ", ".join(f"{op['op_type']} {op['name']!r}" for op in fusion.float_ops[:5]) or \
            f"{fusion.stray_q} QuantizeLinear / {fusion.stray_dq} DequantizeLinear inside the graph"
        raise GraphError(f"{source}: onnxruntime runs {len(fusion.float_ops)} op(s) in float ({listed}; "
                         f"{float_ops_text(fusion)}); drop --require-full-integer to accept them, or see the "
                         "report's fusion section for what has no integer kernel")
    if config.effective_batch is not None:  # after the report, whose SQNR runs in batches of any size
        fix_batch(qdq, config.effective_batch)
    problems = layout_problems(qdq, config.profile, config.effective_batch)
    verdict = verify_on_runtime(qdq, config.profile, execution.thread_count, _agreement_inputs(calib, config))
    if not verdict.verified and verdict.agreement_db is not None:
        if saturates_here:
            verdict = replace(verdict, why=f"{verdict.why}; this CPU has no VNNI, so its kernels saturate: quantize with "
                                           "--reduce-range")
        assert verdict.why is not None, "an unverified comparison says why"
        warnings.append(verdict.why)
    target = TargetVerdict(config.target, problems, verdict)
    return replace(report, calibration=calibration, batch=config.effective_batch, target=target,
                   warnings=tuple(warnings))


def _agreement_inputs(calib: np.ndarray, config: QuantConfig) -> np.ndarray | None:
    """The calibration inputs the target runtime runs against the reference: whole fixed batches, or None (too few)."""
    batch = config.effective_batch or 1
    count = max(_AGREEMENT_INPUTS // batch, 1) * batch
    return calib[:count] if len(calib) >= count else None


def synthetic_output_roots(float_model: onnx.ModelProto, plan: QuantPlan, calibrators: dict[str, str]) -> list[str]:
    """The network outputs' parameter tensors whose range minmax takes from synthetic data and whose top end
    SYNTHETIC_OUTPUT_HEADROOM widens (a searched range, mse or percentile, chooses its own top)."""
    outputs = [o.name for o in float_model.graph.output if o.name in plan.activations]
    roots = dict.fromkeys(plan.root(name) for name in outputs)
    return [r for r in roots if not plan.activations[r].constant and calibrators.get(r) == "minmax"]


def cap_to_fused_clips(float_model: onnx.ModelProto, plan: QuantPlan, act: dict[str, QParams]) -> dict[str, QParams]:
    """The grid of a Clip(0, H) output that a layer absorbs (ReLU6, a HardSigmoid gate) ends at H at most.

    onnxruntime drops such a Clip only when the QuantizeLinear after it cannot represent more than [0, H];
    a step learned by reconstruction can grow past H / qmax (measured: 1.05 / 255 on MobileNetV3's gates),
    which left the Clip and its Add in float. The values never exceed H, so the capped grid loses nothing.
    """
    constants = {init.name: init for init in float_model.graph.initializer}
    clips = {node.name: node for node in float_model.graph.node if node.op_type == "Clip"}
    capped = dict(act)
    for layer in plan.layers:
        clip = clips.get(layer.activation_node or "")
        if clip is None or len(clip.input) < 3 or clip.input[2] not in constants or layer.output not in plan.activations:
            continue
        high = float(numpy_helper.to_array(constants[clip.input[2]]).reshape(-1)[0])
        root = plan.root(layer.output)
        params = capped[root]
        if params.axis is None and int(params.zero_point) == params.qtype.qmin \
                and float(params.scale) * (params.qtype.qmax - params.qtype.qmin) > high:
            levels = params.qtype.qmax - params.qtype.qmin
            scale = np.float32(high / levels)
            while np.float32(scale * np.float32(levels)) > high:  # float32 rounding must not reopen the range
                scale = np.nextafter(scale, np.float32(0))
            capped[root] = QParams(np.asarray(scale, np.float32), params.zero_point, params.qtype, params.axis, params.qmin)
    return capped


def _resume_point(float_model: onnx.ModelProto, calib: np.ndarray, config: QuantConfig, checkpoint: Path | None,
                  resume: bool):
    """The reconstruction checkpoint of this run (None without reconstruction or path); checked now when resuming."""
    if checkpoint is None or not config.reconstruction.enabled:
        return None
    from toolchain.quantize.reconstruct.resume import ResumePoint, check_resumable  # deferred: torch loads only when this runs (start-up time)

    quantizer = {k: v for k, v in config.to_dict().items() if k != "reconstruction"}
    calib_sha256 = hashlib.sha256(np.ascontiguousarray(calib).data).hexdigest()  # no copy of the set
    identity = {"model": model_sha256(float_model), "calib": calib_sha256, "quantizer": quantizer,
                "method": config.reconstruction.method, "seed": config.reconstruction.seed}
    point = ResumePoint(checkpoint, identity, resume)
    if resume:
        check_resumable(point)
    return point
