"""Fix the batch dimension of a model's inputs and outputs (runtimes without dynamic shapes: QNN HTP).

Usage:
    check_batch(model, 1, source)  # before any work: a different fixed batch is a ConfigError
    fix_batch(qdq_model, 1)        # in place; every graph input and output gets dim 0 = 1

Only the declared shapes change: the graph computes the same thing for that batch. Intermediate shapes
are left to the runtime's shape inference (the quantizer keeps no value_info). A dim 0 that is already
a number must equal `batch`: a model exported for batch 4 cannot be declared batch 1.
"""

from __future__ import annotations

import onnx

from toolchain.errors import ConfigError


def _batch_dims(model: onnx.ModelProto) -> list[tuple[str, onnx.TensorShapeProto.Dimension]]:
    constants = {init.name for init in model.graph.initializer}
    found = []
    for value in [*model.graph.input, *model.graph.output]:
        if value.name not in constants and value.type.HasField("tensor_type") and value.type.tensor_type.shape.dim:
            found.append((value.name, value.type.tensor_type.shape.dim[0]))
    return found


def check_batch(model: onnx.ModelProto, batch: int, source: str = "model") -> None:
    """ConfigError when an input or output already has a different fixed batch (checked before any work)."""
    for name, first in _batch_dims(model):
        if first.HasField("dim_value") and first.dim_value not in (0, batch):
            raise ConfigError(f"{source}: tensor {name!r} has a fixed batch of {first.dim_value}; pass --batch "
                              f"{first.dim_value} or re-export the model with a dynamic batch")


def fix_batch(model: onnx.ModelProto, batch: int) -> None:
    check_batch(model, batch)
    for _, first in _batch_dims(model):
        first.Clear()
        first.dim_value = batch
