"""Is this ONNX model sound enough to work on? Checks that turn a damaged file into one line naming the problem.

Usage:
    check_structure(model, "model.onnx")              # text fields, tensor types and sizes, onnx.checker
    check_runs(model, "model.onnx", (8, 8))           # onnxruntime loads it and runs a zero image

A model read from disk passes `check_structure` before any command looks at it (files.load_model);
commands that execute it (quantize, generate, evaluate) also require `check_runs`, so that onnxruntime's
verdict on the user's own file comes first, as a user error, and a later onnxruntime failure on a graph
the toolchain derived is a bug of the toolchain, reported as such.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.errors import GraphError, ModelFileError
from toolchain.onnxio.external_data import SUB_BYTE_BITS, all_tensors, check_model, expected_bytes

_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
# onnx.checker demands a shape on graph outputs, which the format (and onnxruntime) does not:
# such outputs are completed by passes.CompleteOutputTypesPass instead of being refused.
_TOLERATED_CHECKER_MESSAGES = ("Field 'shape' of 'type' is required but missing",)


def _first_line(err: BaseException, limit: int = 240) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_text(message, source: str, path: str = "model") -> None:
    """Decode every string field (protobuf decodes lazily, so invalid UTF-8 would surface anywhere later)."""
    if isinstance(message, onnx.TensorProto):  # tensor payloads are bytes; only names and keys are text
        fields = [(d, getattr(message, d.name)) for d in message.DESCRIPTOR.fields
                  if d.name in ("name", "doc_string", "external_data", "string_data")]
    else:
        fields = message.ListFields()
    for descriptor, value in fields:
        items = value if descriptor.is_repeated else [value]
        if descriptor.type == descriptor.TYPE_MESSAGE:
            for item in items:
                _check_text(item, source, f"{path}.{descriptor.name}")
        elif descriptor.type == descriptor.TYPE_STRING:
            for item in items:  # protobuf hands out invalid UTF-8 of a proto2 string field as bytes
                if isinstance(item, bytes):
                    raise ModelFileError(f"{source}: the text field {path}.{descriptor.name} is not valid UTF-8; the file "
                                         "is corrupt: export it again")


def check_text_fields(model: onnx.ModelProto, source: str) -> None:
    try:
        _check_text(model, source)
    except UnicodeDecodeError as err:
        raise ModelFileError(f"{source}: a name or text field is not valid UTF-8 ({err.reason} at byte {err.start}); "
                             "the file is corrupt: export it again") from err


def check_tensors(model: onnx.ModelProto, source: str) -> None:
    """Every stored tensor has a known element type and as many values as its shape needs."""
    for tensor in all_tensors(model):
        name = tensor.name or "(unnamed)"
        if tensor.data_type not in onnx.TensorProto.DataType.values() or tensor.data_type == onnx.TensorProto.UNDEFINED:
            raise ModelFileError(f"{source}: tensor {name!r} has an unknown element type ({tensor.data_type}); the file is "
                                 "corrupt or from a newer ONNX: export it again")
        if any(d < 0 for d in tensor.dims):
            raise ModelFileError(f"{source}: tensor {name!r} has a negative dimension {list(tensor.dims)}; export it again")
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue  # sized by external_data when it is read
        count = int(np.prod(tensor.dims, dtype=np.int64)) if len(tensor.dims) else 1
        if tensor.HasField("raw_data"):
            need = expected_bytes(tensor)
            have = len(tensor.raw_data)
            if need is not None and have != need:
                raise ModelFileError(f"{source}: tensor {name!r} of shape {list(tensor.dims)} "
                                     f"({onnx.TensorProto.DataType.Name(tensor.data_type)}) needs {need} bytes but holds "
                                     f"{have}; the file is corrupt: export it again")
            continue
        stored = max(len(getattr(tensor, f)) for f in _TYPED_FIELDS)
        per_value = 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
        if stored and stored != count * per_value and not _packed(tensor, stored, count):
            raise ModelFileError(f"{source}: tensor {name!r} of shape {list(tensor.dims)} holds {stored} values instead "
                                 f"of {count}; the file is corrupt: export it again")


def _packed(tensor: onnx.TensorProto, stored: int, count: int) -> bool:
    """INT4/UINT4 (and INT2/UINT2) values are packed several to an int32_data entry (one byte each)."""
    bits = SUB_BYTE_BITS.get(tensor.data_type)
    return bits is not None and stored == (count * bits + 7) // 8


def check_attributes(model: onnx.ModelProto, source: str) -> None:
    """Attribute values onnx.checker lets through but no runtime can honour."""
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            epsilon = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-5)
            if not np.isfinite(epsilon) or epsilon < 0:
                raise GraphError(f"{source}: BatchNormalization {node.name or node.output[0]!r} has epsilon {epsilon}; it must "
                                 "be a small non-negative number (1e-5 by default): export the model again")


def check_batchnorm_statistics(model: onnx.ModelProto, source: str) -> None:
    """Running means finite, running variances finite and non-negative: data generation matches them."""

    initializers = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "BatchNormalization" or len(node.input) < 5:
            continue
        mean, var = (initializers.get(name) for name in node.input[3:5])
        name = node.name or node.output[0]
        for label, tensor in (("mean", mean), ("variance", var)):
            if tensor is None:
                continue
            values = numpy_helper.to_array(tensor)
            if not np.isfinite(values).all() or (label == "variance" and (values < 0).any()):
                raise GraphError(f"{source}: BatchNormalization {name!r} has running {label} values that are NaN, infinite"
                                 f"{' or negative' if label == 'variance' else ''}; the model's statistics are broken: "
                                 "re-export it from a correctly trained model")


def check_structure(model: onnx.ModelProto, source: str) -> None:
    """Text, tensors, then onnx.checker (topological order, names, opsets, attributes); ModelFileError/GraphError."""
    check_text_fields(model, source)
    check_tensors(model, source)
    check_attributes(model, source)
    try:
        check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as err:
        if not any(tolerated in str(err) for tolerated in _TOLERATED_CHECKER_MESSAGES):
            raise GraphError(f"{source} is not a valid ONNX model: onnx.checker says {_first_line(err)}; "
                             "export it again (or fix the exporter's output)") from err


def _zero_input(model: onnx.ModelProto, input_size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    initializers = {i.name for i in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
        if len(dims) == 4 and input_size is not None:
            dims[2:] = [d or s for d, s in zip(dims[2:], input_size)]
        dims = [d if d > 0 else 1 for d in dims]
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else np.float32
        feeds[value.name] = np.zeros(dims, dtype)
    return feeds


def check_runs(model: onnx.ModelProto, source: str, input_size: tuple[int, int] | None = None,
               sample: np.ndarray | None = None) -> None:
    """onnxruntime (CPU) loads `model` and runs it once, on `sample` (one model input, batch first) or else on a
    zero image of `input_size` (batch 1); GraphError with onnxruntime's message otherwise."""
    import onnxruntime as ort  # deferred: onnxruntime loads only when this runs (start-up time)

    from toolchain.onnxio.sessions import inference_session  # deferred: onnxruntime loads only when this runs (start-up time)

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = inference_session(model, options)
    except Exception as err:
        raise GraphError(f"onnxruntime cannot load {source}: {_first_line(err)}; the graph is inconsistent: "
                         "export the model again") from err
    feeds = _zero_input(model, input_size)
    if sample is not None and len(feeds) == 1:
        feeds = {next(iter(feeds)): sample}
    try:
        outputs = session.run(None, feeds)
    except Exception as err:
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
        what = "the first calibration input" if sample is not None else "a zero input"
        raise GraphError(f"onnxruntime cannot run {source} on {what} ({shapes}): {_first_line(err)}; "
                         "the graph is inconsistent: export it again") from err
    what = "the first calibration input" if sample is not None else "a zero input"
    for value, output in zip(session.get_outputs(), outputs):
        output = np.asarray(output)
        if not np.issubdtype(output.dtype, np.floating):
            raise GraphError(f"{source}: output {value.name!r} is {output.dtype}, not float; the toolchain "
                             "quantizes networks whose outputs are float tensors (logits, features)")
        if not np.isfinite(output).all():
            raise GraphError(f"{source}: output {value.name!r} is NaN or infinite on {what}; check the model's weights "
                             "(NaN, Inf, overflowing values) and, for calibration data, the input values")
    check_batchnorm_statistics(model, source)
