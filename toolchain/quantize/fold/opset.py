"""Raise a model's opset to what its Q/DQ integer types need (INT4/UINT4: 21, INT2/UINT2: 25).

Usage:
    model = upgrade_opset(model, 21)
"""

from __future__ import annotations

import onnx
import onnx.version_converter

from toolchain.errors import GraphError


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """The model at opset >= target: onnx's version converter, or a plain bump when no op changed meaning."""
    current = _default_opset(model)
    if current >= target:
        return model
    try:
        return onnx.version_converter.convert_version(model, target)
    except Exception as err:  # the converter raises RuntimeError / IndexError / its own types
        changed = sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx") and _changed(n.op_type, current, target)})
        if changed:
            raise GraphError(
                f"cannot raise the opset from {current} to {target} (needed by the low-bit types): onnx's converter failed "
                f"({err}) and {', '.join(changed)} changed between these opsets; re-export the model at opset {target}"
            ) from err
        for entry in model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = target
        return model


def _changed(op_type: str, old: int, new: int) -> bool:
    try:
        return onnx.defs.get_schema(op_type, old).since_version != onnx.defs.get_schema(op_type, new).since_version
    except onnx.defs.SchemaError:
        return True
