"""Deterministic mutated inputs for the fuzz test: broken ONNX models, calibration files, image data, weights.

Usage:
    cases = all_cases()           # list[FuzzCase], the same on every run (fixed seeds)
    case.write(folder)            # the case's input files
    case.argv(folder)             # the `toolchain ...` arguments that read them

Every case is one command reading one damaged input beside valid others. The base model is a tiny
Conv-BN-ReLU-pool-Gemm network on 1x8x8 inputs, built here with onnx.helper so that the cases do not
depend on the exporter; the valid calibration set, image archive and weights are as small as possible.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from PIL import Image

from toolchain.preprocessing import Preprocessing, write_preprocessing

CLASSES = ("zero", "one", "two")


@dataclass(frozen=True)
class FuzzCase:
    """One damaged input and the command that reads it.

    Attributes:
        category: what kind of damage (onnx-bytes, onnx-truncated, onnx-fields, onnx-external, npz, images, weights).
        name: unique and stable, e.g. "onnx-bytes/017/quantize".
        files: relative path -> content; a Path value is a symbolic link target.
        args: the command line, with {DIR} standing for the case folder.
        outputs: files the command would write (must not exist after a failure).
    """

    category: str
    name: str
    files: dict[str, bytes | Path]
    args: tuple[str, ...]
    outputs: tuple[str, ...] = ()
    may_succeed: bool = True  # a mutation that leaves a valid input (a flipped weight byte) may succeed

    def write(self, folder: Path) -> None:
        for relative, content in self.files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                path.symlink_to(content)
            else:
                path.write_bytes(content)

    def argv(self, folder: Path) -> list[str]:
        return [a.replace("{DIR}", str(folder)) for a in self.args]


# ---------------------------------------------------------------------------------------------- valid inputs


def base_model() -> onnx.ModelProto:
    """x[N,1,8,8] -> Conv(4) -> BN -> Relu -> GlobalAveragePool -> Flatten -> Gemm(3) -> y; preprocessing stamped."""
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.5,
        "b": rng.standard_normal(4).astype(np.float32) * 0.1,
        "gamma": (1.0 + 0.1 * rng.standard_normal(4)).astype(np.float32),
        "beta": (0.1 * rng.standard_normal(4)).astype(np.float32),
        "mean": (0.1 * rng.standard_normal(4)).astype(np.float32),
        "var": (1.0 + 0.1 * rng.random(4)).astype(np.float32),
        "fc_w": rng.standard_normal((3, 4)).astype(np.float32),
        "fc_b": np.zeros(3, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "fuzz_base",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    write_preprocessing(model, Preprocessing(mean=(0.5,), std=(0.25,), input_size=(8, 8), class_names=CLASSES))
    onnx.checker.check_model(model, full_check=True)
    return model


def base_model_bytes() -> bytes:
    return base_model().SerializeToString()


def calib_npz(inputs: np.ndarray | None = None, **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    if inputs is not None:
        arrays = {"inputs": inputs, **arrays}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def valid_calibration() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((8, 1, 8, 8)).astype(np.float32)


def png_bytes(seed: int, size: int = 8, mode: str = "L") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size) if mode == "L" else (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def image_members(per_class: int = 2) -> dict[str, bytes]:
    return {f"data/{name}/{i}.png": png_bytes(10 * c + i) for c, name in enumerate(CLASSES) for i in range(per_class)}


def tar_bytes(members: dict[str, bytes], gzip: bool = True, links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- commands

MODEL = "{DIR}/model.onnx"
CALIB = "{DIR}/calib.npz"
DATA = "{DIR}/data.tar.gz"
QDQ = "{DIR}/out.onnx"


def _quantize(model: str = MODEL, calib: str = CALIB) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return ("quantize", model, "--calib", calib, "-o", QDQ, "--calib-limit", "4"), ("out.onnx", "out.report.json")


def _commands_for_model() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    return {
        "inspect": (("inspect", MODEL, "--json"), ()),
        "quantize": _quantize(),
        "evaluate": (("evaluate", MODEL, "--data", DATA), ()),
        "generate": (("generate", MODEL, "--method", "bns", "-n", "4", "--batch-size", "4", "--iterations", "1",
                      "--preset", "fast", "-o", "{DIR}/gen.npz"), ("gen.npz",)),
        "stamp": (("stamp", MODEL, "--mean", "0.5", "--std", "0.25", "--input-size", "8", "-o", "{DIR}/stamped.onnx"),
                  ("stamped.onnx",)),
    }


def _valid_support_files() -> dict[str, bytes]:
    return {"calib.npz": calib_npz(valid_calibration()), "data.tar.gz": tar_bytes(image_members())}


def _model_cases(category: str, variants: list[tuple[str, bytes, dict[str, bytes | Path]]], commands: list[str],
                 may_succeed: bool = True) -> list[FuzzCase]:
    support = _valid_support_files()
    table = _commands_for_model()
    cases = []
    for index, (label, model_bytes, extra) in enumerate(variants):
        command = commands[index % len(commands)]
        args, outputs = table[command]
        files = {**support, "model.onnx": model_bytes, **extra}
        cases.append(FuzzCase(category, f"{category}/{label}/{command}", files, args, outputs, may_succeed))
    return cases


# ---------------------------------------------------------------------------------------------- ONNX: bytes


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
    return _model_cases("onnx-bytes", variants, ["inspect", "quantize", "evaluate", "generate", "stamp"])


def truncation_cases(count: int = 60, seed: int = 200) -> list[FuzzCase]:
    """The serialised model cut at a random length (0 included), or padded with garbage."""
    original = base_model_bytes()
    rng = np.random.default_rng(seed)
    variants = [("empty", b"", {}), ("one-byte", original[:1], {}), ("garbage-tail", original + b"\xff\x00\x13" * 7, {})]
    variants += [(f"{i:03d}", original[: int(rng.integers(1, len(original)))], {}) for i in range(count - len(variants))]
    return _model_cases("onnx-truncated", variants, ["inspect", "quantize", "evaluate", "stamp"])


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
    cases = _model_cases("onnx-fields", variants, commands)
    # the commands that go deepest (quantize, generate) also see every edit
    cases += [FuzzCase(c.category, c.name.rsplit("/", 1)[0] + f"/{command}", c.files, *_commands_for_model()[command])
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
        cases += _model_cases("onnx-external", [(k, *v) for k, v in variants.items()], [command], may_succeed=False)
    return cases


# ---------------------------------------------------------------------------------------------- calibration .npz


def npz_cases() -> list[FuzzCase]:
    """Calibration .npz files with wrong keys, dtypes, shapes, NaN/inf, and damaged archives."""
    good = valid_calibration()
    variants: dict[str, bytes] = {
        "no-inputs-key": calib_npz(None, images=good), "empty-archive": calib_npz(None),
        "float64": calib_npz(good.astype(np.float64)), "float16": calib_npz(good.astype(np.float16)),
        "int64": calib_npz(good.astype(np.int64)), "uint8": calib_npz((good * 40 + 128).clip(0, 255).astype(np.uint8)),
        "bool": calib_npz(good > 0), "complex": calib_npz(good.astype(np.complex64)),
        "rank-3": calib_npz(good[:, 0]), "rank-5": calib_npz(good[:, None]), "rank-1": calib_npz(good.reshape(-1)),
        "scalar": calib_npz(np.float32(1.0)), "zero-images": calib_npz(good[:0]),
        "3-channels": calib_npz(np.repeat(good, 3, axis=1)), "size-16": calib_npz(np.zeros((4, 1, 16, 16), np.float32)),
        "nhwc": calib_npz(good.transpose(0, 2, 3, 1).copy()), "nan": calib_npz(np.where(good > 1, np.nan, good).astype(np.float32)),
        "inf": calib_npz(np.where(good > 1, np.inf, good).astype(np.float32)),
        "neg-inf": calib_npz(np.where(good > 1, -np.inf, good).astype(np.float32)),
        "huge-values": calib_npz((np.sign(good) * 3e38).astype(np.float32)), "all-zero": calib_npz(np.zeros_like(good)),
        "one-image": calib_npz(good[:1]), "labels-wrong-length": calib_npz(good, labels=np.arange(3)),
        "labels-float": calib_npz(good, labels=np.linspace(0, 1, 8)), "labels-2d": calib_npz(good, labels=np.zeros((8, 2))),
        "manifest-not-json": calib_npz(good, manifest=np.array("{oops")), "manifest-number": calib_npz(good, manifest=np.array(3.0)),
        "manifest-list": calib_npz(good, manifest=np.array('["a"]')),
        "inputs-string": calib_npz(np.array(["a", "b"])),
    }
    buffer = io.BytesIO()
    np.savez(buffer, inputs=np.array([good, "x"], dtype=object))
    variants["object-pickle"] = buffer.getvalue()
    raw = calib_npz(good)
    variants.update({"truncated-half": raw[: len(raw) // 2], "truncated-10": raw[:10], "empty-file": b"",
                     "not-zip": b"hello world" * 10, "npy-not-npz": _npy_bytes(good)})
    rng = np.random.default_rng(300)
    for i in range(12):
        data = bytearray(raw)
        for position in rng.integers(0, len(data), rng.integers(1, 6)):
            data[position] = int(rng.integers(0, 256))
        variants[f"flipped-{i:02d}"] = bytes(data)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("inputs.npy", b"\x93NUMPY garbage")
    variants["zip-garbage-member"] = zipped.getvalue()
    support = {"model.onnx": base_model_bytes(), "data.tar.gz": tar_bytes(image_members())}
    cases = []
    for label, content in variants.items():
        args, outputs = _quantize()
        cases.append(FuzzCase("npz", f"npz/{label}/quantize", {**support, "calib.npz": content}, args, outputs))
        if label in ("no-inputs-key", "float64", "nan", "truncated-half", "not-zip", "rank-3", "labels-wrong-length", "object-pickle"):
            # the same files as an evaluation set (images/labels .npz) and as generate's real-data pool
            cases.append(FuzzCase("npz", f"npz/{label}/evaluate", {**support, "calib.npz": content},
                                  ("evaluate", MODEL, "--data", CALIB)))
            cases.append(FuzzCase("npz", f"npz/{label}/generate-real", {**support, "calib.npz": content},
                                  ("generate", MODEL, "--method", "real", "-n", "2", "--data", CALIB, "-o", "{DIR}/gen.npz"),
                                  ("gen.npz",)))
    images_npz = {"images-float": calib_npz(None, images=np.zeros((4, 8, 8), np.float32), labels=np.zeros(4, np.int64)),
                  "images-rank-2": calib_npz(None, images=np.zeros((8, 8), np.uint8), labels=np.zeros(1, np.int64)),
                  "labels-out-of-range": calib_npz(None, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 2, 99])),
                  "labels-negative": calib_npz(None, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, -1, 2, 1])),
                  "class-names-wrong": calib_npz(None, images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0, 1]),
                                                 class_names=np.array(["cat", "dog"])),
                  "images-5-channels": calib_npz(None, images=np.zeros((2, 8, 8, 5), np.uint8), labels=np.array([0, 1])),
                  "images-empty": calib_npz(None, images=np.zeros((0, 8, 8), np.uint8), labels=np.zeros(0, np.int64))}
    for label, content in images_npz.items():
        cases.append(FuzzCase("npz", f"npz/{label}/evaluate", {**support, "images.npz": content},
                              ("evaluate", MODEL, "--data", "{DIR}/images.npz")))
        args, outputs = _quantize(calib="{DIR}/images.npz")
        cases.append(FuzzCase("npz", f"npz/{label}/quantize-dataset", {**support, "images.npz": content}, args, outputs))
    return cases


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- images


def image_cases(count_flips: int = 20, seed: int = 400) -> list[FuzzCase]:
    """Corrupt image archives, folders and image files, read by evaluate, quantize (dataset) and generate --data."""
    members = image_members()
    good_tar = tar_bytes(members)
    first = next(iter(members))
    archives: dict[str, dict[str, bytes | Path]] = {
        "truncated-archive": {"data.tar.gz": good_tar[: len(good_tar) // 2]},
        "truncated-archive-10": {"data.tar.gz": good_tar[:10]},
        "empty-archive-file": {"data.tar.gz": b""},
        "not-gzip": {"data.tar.gz": b"plain text, not an archive\n" * 20},
        "empty-tar": {"data.tar.gz": tar_bytes({})},
        "no-class-folders": {"data.tar.gz": tar_bytes({"a.png": png_bytes(1), "b.png": png_bytes(2)})},
        "unknown-classes": {"data.tar.gz": tar_bytes({"data/cat/0.png": png_bytes(1), "data/dog/0.png": png_bytes(2)})},
        "corrupt-png": {"data.tar.gz": tar_bytes({**members, first: b"\x89PNG\r\n\x1a\n garbage"})},
        "zero-byte-image": {"data.tar.gz": tar_bytes({**members, first: b""})},
        "text-as-jpg": {"data.tar.gz": tar_bytes({**members, "data/zero/x.jpg": b"not a jpeg"})},
        "huge-dimensions-header": {"data.tar.gz": tar_bytes({**members, first: _png_header(60000, 60000)})},
        "only-non-images": {"data.tar.gz": tar_bytes({"data/zero/readme.txt": b"hello"})},
        "path-traversal-member": {"data.tar.gz": tar_bytes({**members, "../../escape/zero/1.png": png_bytes(3)})},
        "absolute-member": {"data.tar.gz": tar_bytes({**members, "/tmp/zero/1.png": png_bytes(3)})},
        "symlink-member": {"data.tar.gz": tar_bytes(members, links={"data/zero/link.png": "/etc/hostname"})},
        "two-top-folders": {"data.tar.gz": tar_bytes({**members, "other/zero/0.png": png_bytes(4)})},
        "uncompressed-named-gz": {"data.tar.gz": tar_bytes(members, gzip=False)},
        "rgba-16bit": {"data.tar.gz": tar_bytes({**members, first: _png_16bit()})},
        "cmyk-jpeg": {"data.tar.gz": tar_bytes({**members, "data/zero/c.jpg": _cmyk_jpeg()})},
        "one-pixel": {"data.tar.gz": tar_bytes({**members, first: png_bytes(5, size=1)})},
    }
    rng = np.random.default_rng(seed)
    for i in range(count_flips):
        data = bytearray(good_tar)
        for position in rng.integers(0, len(data), rng.integers(1, 6)):
            data[position] = int(rng.integers(0, 256))
        archives[f"flipped-archive-{i:02d}"] = {"data.tar.gz": bytes(data)}
    archives["folder-corrupt-image"] = {**members, first: b"GIF89a broken"}
    archives["folder-empty-class"] = {"data/zero/.keep": b""}
    support = {"model.onnx": base_model_bytes(), "calib.npz": calib_npz(valid_calibration())}
    cases = []
    for label, files in archives.items():
        source = "{DIR}/data" if label.startswith("folder-") else DATA
        cases.append(FuzzCase("images", f"images/{label}/evaluate", {**support, **files}, ("evaluate", MODEL, "--data", source)))
        args, outputs = _quantize(calib=source)
        cases.append(FuzzCase("images", f"images/{label}/quantize-dataset", {**support, **files}, args, outputs))
        cases.append(FuzzCase("images", f"images/{label}/generate-fdda", {**support, **files},
                              ("generate", MODEL, "--method", "fdda", "-n", "3", "--batch-size", "3", "--iterations", "1",
                               "--preset", "fast", "--data", source, "-o", "{DIR}/gen.npz"), ("gen.npz",)))
    return cases


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge image but holds almost no data (a decompression-bomb shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _png_16bit() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- weights (export)


def weights_cases() -> list[FuzzCase]:
    """State dicts for `toolchain export digits_resnet --weights` that are damaged or belong to another model."""
    import torch

    from toolchain.zoo import load_zoo_model

    state = load_zoo_model("digits_resnet").module.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    good = buffer.getvalue()
    first = next(iter(state))
    variants: dict[str, bytes] = {"truncated-pt": good[: len(good) // 2], "empty-pt": b"", "garbage-pt": b"\x80\x04garbage" * 30,
                                  "npz-wrong-keys": calib_npz(None, nothing=np.zeros(3, np.float32)),
                                  "npz-wrong-shape": calib_npz(None, **{k: np.zeros(3, np.float32) for k in state})}
    wrong = dict(state)
    wrong[first] = torch.zeros(1)
    buffer = io.BytesIO()
    torch.save(wrong, buffer)
    variants["pt-wrong-shape"] = buffer.getvalue()
    buffer = io.BytesIO()
    torch.save([1, 2, 3], buffer)
    variants["pt-list"] = buffer.getvalue()
    cases = []
    for label, content in variants.items():
        suffix = ".npz" if label.startswith("npz") else ".pt"
        cases.append(FuzzCase("weights", f"weights/{label}/export", {f"w{suffix}": content},
                              ("export", "digits_resnet", "--weights", f"{{DIR}}/w{suffix}", "-o", "{DIR}/e.onnx"), ("e.onnx",)))
    return cases


def all_cases() -> list[FuzzCase]:
    return (byte_flip_cases() + truncation_cases() + field_edit_cases() + external_data_cases() + npz_cases()
            + image_cases() + weights_cases())
