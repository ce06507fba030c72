"""Damaged ONNX models for the fuzz test: byte flips, truncations, structured field edits, external data.

Usage:
    cases = byte_flip_cases() + truncation_cases() + field_edit_cases() + external_data_cases()
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fuzz_inputs import FuzzCase, base_model, base_model_bytes, commands_for_model, model_cases


def byte_flip_cases(count: int = 150, seed: int = 100) -> list[FuzzCase]:
    """1 to 8 random bytes of the serialised model replaced by random values."""
    original = base_model_bytes()
    rng = np.random.default_rng(seed)
    variants = []
    for i in range(count):
        data = bytearray(original)
        for position in rng.integers(0, len(data), rng.integers(1, 9)):
            data[position] = int(rng.integers(0, 256))
        variants.append((f"{i:03d}", bytes(data), {}))
    return model_cases("onnx-bytes", variants, ["inspect", "quantize", "evaluate", "generate", "stamp"])


def truncation_cases(count: int = 60, seed: int = 200) -> list[FuzzCase]:
    """The serialised model cut at a random length (0 included), or padded with garbage."""
    original = base_model_bytes()
    rng = np.random.default_rng(seed)
    variants = [("empty", b"", {}), ("one-byte", original[:1], {}), ("garbage-tail", original + b"\xff\x00\x13" * 7, {})]
    variants += [(f"{i:03d}", original[: int(rng.integers(1, len(original)))], {}) for i in range(count - len(variants))]
    return model_cases("onnx-truncated", variants, ["inspect", "quantize", "evaluate", "stamp"])


# ---------------------------------------------------------------------------------------------- ONNX: fields


def _edited(edit: Callable[[onnx.ModelProto], None]) -> bytes:
    model = base_model()
    edit(model)
    return model.SerializeToString()


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _set_dims(name: str, dims: list[int]) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        tensor = _init(model, name)
        array = numpy_helper.to_array(tensor).reshape(-1)
        count = int(np.prod(dims)) if dims else 1
        values = np.resize(array, count).reshape(dims).astype(np.float32)
        tensor.CopyFrom(numpy_helper.from_array(values, name))
    return edit


def _set_dims_only(name: str, dims: list[int]) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:  # dims that do not match the stored bytes
        tensor = _init(model, name)
        del tensor.dims[:]
        tensor.dims.extend(dims)
    return edit


def _set_dtype(name: str, data_type: int, cast: bool) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        tensor = _init(model, name)
        if cast and data_type != onnx.TensorProto.STRING:
            array = numpy_helper.to_array(tensor).astype(helper.tensor_dtype_to_np_dtype(data_type))
            tensor.CopyFrom(numpy_helper.from_array(array, name))
        else:
            tensor.data_type = data_type
    return edit


def _remove_node(name: str) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        model.graph.node.remove(_node(model, name))
    return edit


def _remove_init(name: str) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        model.graph.initializer.remove(_init(model, name))
    return edit


def _rewire(node: str, index: int, tensor: str) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        target = _node(model, node)
        while len(target.input) <= index:
            target.input.append("")
        target.input[index] = tensor
    return edit


def _rename_output(node: str, tensor: str) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        _node(model, node).output[0] = tensor
    return edit


def _set_attr(node: str, name: str, value) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        target = _node(model, node)
        kept = [a for a in target.attribute if a.name != name]
        del target.attribute[:]
        target.attribute.extend(kept)
        if value is not None:
            target.attribute.append(helper.make_attribute(name, value))
    return edit


def _set_input_type(elem_type: int, dims: list) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", elem_type, dims))
    return edit


def _set_metadata(key: str, value: str | None) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        kept = [p for p in model.metadata_props if p.key != key]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        if value is not None:
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value
    return edit


def _preprocessing_key(model: onnx.ModelProto) -> str:
    return next(p.key for p in model.metadata_props if "preprocessing" in p.key)


def _misc_edits() -> dict[str, Callable[[onnx.ModelProto], None]]:
    def duplicate_node(model):
        model.graph.node.insert(1, model.graph.node[0])

    def duplicate_init(model):
        model.graph.initializer.append(model.graph.initializer[0])

    def duplicate_node_names(model):
        for node in model.graph.node:
            node.name = "same"

    def cycle(model):
        _node(model, "conv").input[0] = "r"

    def self_loop(model):
        _node(model, "relu").input[0] = "r"

    def reversed_nodes(model):
        nodes = list(model.graph.node)[::-1]
        del model.graph.node[:]
        model.graph.node.extend(nodes)

    def no_outputs(model):
        del model.graph.output[:]

    def no_inputs(model):
        del model.graph.input[:]

    def two_inputs(model):
        model.graph.input.append(helper.make_tensor_value_info("x2", onnx.TensorProto.FLOAT, [1, 1, 8, 8]))

    def output_unknown(model):
        model.graph.output[0].name = "nowhere"

    def no_opset(model):
        del model.opset_import[:]

    def opset(version):
        def edit(model):
            model.opset_import[0].version = version
        return edit

    def ir(version):
        def edit(model):
            model.ir_version = version
        return edit

    def op_type(node, new):
        def edit(model):
            _node(model, node).op_type = new
        return edit

    def domain(model):
        _node(model, "conv").domain = "com.example"

    def nan_weights(model):
        tensor = _init(model, "w")
        tensor.CopyFrom(numpy_helper.from_array(np.full((4, 1, 3, 3), np.nan, np.float32), "w"))

    def inf_var(model):
        _init(model, "var").CopyFrom(numpy_helper.from_array(np.full(4, np.inf, np.float32), "var"))

    def negative_var(model):
        _init(model, "var").CopyFrom(numpy_helper.from_array(np.full(4, -1.0, np.float32), "var"))

    def zero_weights(model):
        _init(model, "w").CopyFrom(numpy_helper.from_array(np.zeros((4, 1, 3, 3), np.float32), "w"))

    def huge_weights(model):
        _init(model, "fc_w").CopyFrom(numpy_helper.from_array(np.full((3, 4), 3e38, np.float32), "fc_w"))

    def output_no_shape(model):
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None))

    def output_wrong_type(model):
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info("y", onnx.TensorProto.INT64, ["batch", 3]))

    def bn_stats_from_node(model):
        model.graph.node.insert(0, helper.make_node("Identity", ["mean"], ["mean_copy"], name="copy"))
        _node(model, "bn").input[3] = "mean_copy"

    def constant_weight(model):
        weight = _init(model, "w")
        model.graph.node.insert(0, helper.make_node("Constant", [], ["w"], name="wconst", value=weight))
        model.graph.initializer.remove(weight)

    def initializer_shadows_input(model):
        model.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 1, 8, 8), np.float32), "x"))

    def empty_graph(model):
        del model.graph.node[:]

    def string_metadata_value(model):
        prop = model.metadata_props.add()
        prop.key, prop.value = "toolchain.source", "\u0000\u0001"

    return {
        "duplicate-node": duplicate_node, "duplicate-initializer": duplicate_init, "duplicate-node-names": duplicate_node_names,
        "cycle": cycle, "self-loop": self_loop, "reversed-order": reversed_nodes, "no-outputs": no_outputs,
        "no-inputs": no_inputs, "two-inputs": two_inputs, "output-names-nothing": output_unknown, "no-opset": no_opset,
        "opset-1": opset(1), "opset-12": opset(12), "opset-999": opset(999), "ir-0": ir(0), "ir-3": ir(3), "ir-99": ir(99),
        "conv-as-convx": op_type("conv", "ConvX"), "relu-as-softmax": op_type("relu", "Softmax"),
        "gemm-as-matmul": op_type("fc", "MatMul"), "bn-as-instancenorm": op_type("bn", "InstanceNormalization"),
        "pool-as-maxpool": op_type("pool", "MaxPool"), "custom-domain": domain, "nan-weights": nan_weights,
        "inf-variance": inf_var, "negative-variance": negative_var, "zero-weights": zero_weights, "huge-weights": huge_weights,
        "output-no-shape": output_no_shape, "output-int64": output_wrong_type, "bn-stats-behind-identity": bn_stats_from_node,
        "weight-from-constant-node": constant_weight, "initializer-shadows-input": initializer_shadows_input,
        "empty-graph": empty_graph, "control-chars-metadata": string_metadata_value,
    }


def field_edit_cases() -> list[FuzzCase]:
    """Structured edits of a valid model: ops removed, dims and dtypes changed, initializers deleted, cycles,
    duplicate names, bad attributes, inputs and metadata."""
    edits: dict[str, Callable[[onnx.ModelProto], None]] = {}
    for node in ("conv", "bn", "relu", "pool", "flatten", "fc"):
        edits[f"remove-{node}"] = _remove_node(node)
    for name in ("w", "b", "gamma", "beta", "mean", "var", "fc_w", "fc_b"):
        edits[f"delete-{name}"] = _remove_init(name)
    shapes = {"w": [[4, 2, 3, 3], [4, 1, 3], [8, 1, 3, 3], [0, 1, 3, 3], [4, 1, 1, 1]], "b": [[5], [], [4, 1]],
              "gamma": [[3], [4, 4]], "mean": [[5]], "fc_w": [[3, 5], [4, 3], [12]], "fc_b": [[4], [1, 3]]}
    for name, options in shapes.items():
        for dims in options:
            edits[f"dims-{name}-{'x'.join(map(str, dims)) or 'scalar'}"] = _set_dims(name, dims)
    for name, dims in (("w", [4, 1, 3, 4]), ("fc_w", [3, 3]), ("var", [8]), ("b", [2])):
        edits[f"dims-only-{name}"] = _set_dims_only(name, dims)
    types = {"INT64": onnx.TensorProto.INT64, "DOUBLE": onnx.TensorProto.DOUBLE, "FLOAT16": onnx.TensorProto.FLOAT16,
             "INT8": onnx.TensorProto.INT8, "BOOL": onnx.TensorProto.BOOL, "STRING": onnx.TensorProto.STRING,
             "UNDEFINED": onnx.TensorProto.UNDEFINED, "BAD-99": 99}
    for name in ("w", "fc_w", "var", "b"):
        for label, data_type in types.items():
            for cast in ((True, False) if label in ("INT64", "DOUBLE", "FLOAT16") else (False,)):
                edits[f"dtype-{name}-{label}{'-cast' if cast else ''}"] = _set_dtype(name, data_type, cast)
    rewires = {"conv-reads-missing": ("conv", 0, "missing"), "conv-weight-is-input": ("conv", 1, "x"),
               "gemm-reads-conv-weight": ("fc", 1, "w"), "relu-reads-two": ("relu", 1, "bn"),
               "conv-empty-input": ("conv", 0, ""), "bn-mean-is-data": ("bn", 3, "c"), "conv-extra-input": ("conv", 3, "b")}
    edits.update({k: _rewire(*v) for k, v in rewires.items()})
    edits["duplicate-output-name"] = _rename_output("relu", "c")
    edits["output-renamed"] = _rename_output("fc", "z")
    attributes = {"conv-no-kernel": ("conv", "kernel_shape", None), "conv-group-3": ("conv", "group", 3),
                  "conv-group-0": ("conv", "group", 0), "conv-stride-0": ("conv", "strides", [0, 0]),
                  "conv-kernel-5": ("conv", "kernel_shape", [5, 5]), "conv-pads-neg": ("conv", "pads", [-9, -9, -9, -9]),
                  "conv-dilation-99": ("conv", "dilations", [99, 99]), "gemm-transb-0": ("fc", "transB", 0),
                  "gemm-alpha-nan": ("fc", "alpha", float("nan")), "bn-epsilon-neg": ("bn", "epsilon", -1.0),
                  "flatten-axis-9": ("flatten", "axis", 9), "relu-bogus-attr": ("relu", "bogus", 1),
                  "conv-auto-pad-bad": ("conv", "auto_pad", "SIDEWAYS")}
    edits.update({k: _set_attr(*v) for k, v in attributes.items()})
    inputs = {"input-int64": (onnx.TensorProto.INT64, ["batch", 1, 8, 8]), "input-rank-3": (onnx.TensorProto.FLOAT, [1, 8, 8]),
              "input-7-channels": (onnx.TensorProto.FLOAT, ["batch", 7, 8, 8]), "input-3-channels": (onnx.TensorProto.FLOAT, [1, 3, 8, 8]),
              "input-size-16": (onnx.TensorProto.FLOAT, [1, 1, 16, 16]), "input-zero-size": (onnx.TensorProto.FLOAT, [0, 1, 0, 8]),
              "input-no-shape": (onnx.TensorProto.FLOAT, None), "input-string": (onnx.TensorProto.STRING, [1, 1, 8, 8])}
    edits.update({k: _set_input_type(*v) for k, v in inputs.items()})
    key = _preprocessing_key(base_model())
    metadata = {"meta-not-json": "{not json", "meta-list": "[1, 2]", "meta-wrong-mean": json.dumps({"mean": [1, 2], "std": [1]}),
                "meta-zero-std": json.dumps({"mean": [0.5], "std": [0.0], "input_size": [8, 8]}),
                "meta-negative-size": json.dumps({"mean": [0.5], "std": [0.5], "input_size": [-8, 8]}),
                "meta-string-mean": json.dumps({"mean": "abc", "std": [0.5], "input_size": [8, 8]}),
                "meta-huge-size": json.dumps({"mean": [0.5], "std": [0.5], "input_size": [100000, 100000]}),
                "meta-version-99": json.dumps({"mean": [0.5], "std": [0.5], "input_size": [8, 8], "version": 99}),
                "meta-null": "null", "meta-removed": None}
    edits.update({k: _set_metadata(key, v) for k, v in metadata.items()})
    edits.update(_misc_edits())
    variants = [(label, _edited(edit), {}) for label, edit in edits.items()]
    commands = ["quantize", "inspect", "generate", "evaluate", "stamp"]
    cases = model_cases("onnx-fields", variants, commands)
    # the commands that go deepest (quantize, generate) also see every edit
    cases += [FuzzCase(c.category, c.name.rsplit("/", 1)[0] + f"/{command}", c.files, *commands_for_model()[command])
              for command in ("quantize", "generate") for c in cases if not c.name.endswith(f"/{command}")]
    return cases


# ---------------------------------------------------------------------------------------------- ONNX: external data


def _external(location: str, offset: int | None = 0, length: int | None = None, file: bytes | None = None,
              link: Path | None = None) -> tuple[bytes, dict[str, bytes | Path]]:
    model = base_model()
    tensor = _init(model, "w")
    raw = numpy_helper.to_array(tensor).tobytes()
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length if length is not None else len(raw))):
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
    extra: dict[str, bytes | Path] = {}
    if link is not None:
        extra["w.bin"] = link
    elif file is not None:
        extra["w.bin"] = file
    elif not location.startswith(("/", "..")):
        extra["w.bin"] = raw
    return model.SerializeToString(), extra


def external_data_cases() -> list[FuzzCase]:
    """External data locations outside the folder, absolute, missing, short, oversized, through links."""
    outside = Path("/etc/hostname")
    variants = {
        "parent-escape": _external("../../../etc/hostname"),
        "absolute": _external("/etc/hostname"),
        "absolute-dev-zero": _external("/dev/zero"),
        "missing-file": _external("nothere.bin"),
        "offset-beyond": _external("w.bin", offset=10_000),
        "negative-offset": _external("w.bin", offset=-4),
        "length-too-long": _external("w.bin", length=10_000),
        "length-too-short": _external("w.bin", length=8),
        "offset-not-int": _external("w.bin", offset="x"),  # type: ignore[arg-type]
        "short-file": _external("w.bin", file=b"\x00" * 10),
        "empty-location": _external(""),
        "directory": _external("."),
        "symlink-outside": _external("w.bin", link=outside),
        "nested-escape": _external("sub/../../w.bin"),
        "windows-drive": _external("C:\\w.bin"),
    }
    cases = []
    for command in ("inspect", "quantize", "evaluate", "generate"):
        cases += model_cases("onnx-external", [(k, *v) for k, v in variants.items()], [command], may_succeed=False)
    return cases


