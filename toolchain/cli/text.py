"""Human-readable text for the CLI (the JSON forms come from the dataclasses' to_dict()).

Usage:
    click.echo(format_summary(summarize(model), "resnet20.onnx"))
"""

from __future__ import annotations

from toolchain.onnxio.graph import GraphSummary

NO_BN_EXPLANATION = (
    "no BatchNormalization nodes: if BN was folded into the convolutions at export, zero-shot data generation "
    "(dgh, bns, fdda) has no statistics to match; re-export with `toolchain export MODEL` (it keeps BN), or with "
    "torch.onnx.export(..., dynamo=False, training=torch.onnx.TrainingMode.PRESERVE). Quantization with real "
    "or gaussian calibration data still works on this file."
)
NORMALISED_WITHOUT_STATISTICS = (
    "no BatchNormalization nodes: the model normalises with {norms}, which keeps no running statistics, so "
    "zero-shot data generation (dgh, bns, fdda) has nothing to match; calibrate with `toolchain generate --method "
    "gaussian` or real images. Quantization works on this file."
)


def _shape(shape: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def format_summary(summary: GraphSummary, source: str) -> str:
    lines = [f"{source}: opset {summary.opset}, {sum(summary.ops.values())} nodes"]
    for label, tensors in (("input", summary.inputs), ("output", summary.outputs)):
        for info in tensors:
            lines.append(f"  {label:<6} {info.name}: {info.dtype} {_shape(info.shape)}")
    lines.append("ops: " + ", ".join(f"{op} {count}" for op, count in summary.ops.items()))
    width = max((len(name) for name in (*(b.node for b in summary.batchnorm), *(q.node for q in summary.quantizable))),
                default=0)
    if summary.batchnorm:
        lines.append(f"BatchNormalization: {summary.num_batchnorm} layers")
        for layer in summary.batchnorm:
            lines.append(f"  {layer.node:<{width}}  {layer.channels:>5} channels  (input {layer.input})")
    else:
        norms = [op for op in ("LayerNormalization", "GroupNormalization", "InstanceNormalization") if op in summary.ops]
        explanation = NORMALISED_WITHOUT_STATISTICS.format(norms=", ".join(norms)) if norms else NO_BN_EXPLANATION
        lines.append(f"BatchNormalization: 0 layers — {explanation}")
    lines.append(f"quantizable layers: {len(summary.quantizable)}")
    for quantizable in summary.quantizable:
        lines.append(f"  {quantizable.node:<{width}}  {quantizable.op_type:<6} weight {list(quantizable.weight_shape)}")
    pre = summary.preprocessing
    if pre is None:
        lines.append("preprocessing: none stored — give --mean/--std/--input-size to later commands or run `toolchain stamp`")
    else:
        classes = f", {len(pre.class_names)} classes" if pre.class_names else ""
        order = pre.channel_order if pre.num_channels == 3 else f"{pre.num_channels}-channel"
        lines.append(
            f"preprocessing: {order} /{pre.pixel_scale:g}, mean {list(pre.mean)}, std {list(pre.std)}, "
            f"input {pre.input_size[0]}x{pre.input_size[1]}{classes}"
        )
    return "\n".join(lines)
