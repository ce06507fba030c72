"""Deterministic mutated inputs for the fuzz test: the case type, the valid inputs and the commands.

Usage:
    cases = all_cases()           # list[FuzzCase], the same on every run (fixed seeds)
    case.write(folder)            # the case's input files
    case.argv(folder)             # the `toolchain ...` arguments that read them

Every case is one command reading one damaged input beside valid others. The base model is a tiny
Conv-BN-ReLU-pool-Gemm network on 1x8x8 inputs, built here with onnx.helper so that the cases do not
depend on the exporter; the valid calibration set, image archive and weights are as small as possible.
The damaged inputs themselves: fuzz_onnx.py (models), fuzz_data.py (.npz, images, weights).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from PIL import Image

from toolchain.onnxio.preprocessing import Preprocessing, write_preprocessing

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


def quantize_command(model: str = MODEL, calib: str = CALIB) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return ("quantize", model, "--calib", calib, "-o", QDQ, "--calib-limit", "4"), ("out.onnx", "out.report.json")


def commands_for_model() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    return {
        "inspect": (("inspect", MODEL, "--json"), ()),
        "quantize": quantize_command(),
        "evaluate": (("evaluate", MODEL, "--data", DATA), ()),
        "generate": (("generate", MODEL, "--method", "bns", "-n", "4", "--batch-size", "4", "--iterations", "1",
                      "--preset", "fast", "-o", "{DIR}/gen.npz"), ("gen.npz",)),
        "stamp": (("stamp", MODEL, "--mean", "0.5", "--std", "0.25", "--input-size", "8", "-o", "{DIR}/stamped.onnx"),
                  ("stamped.onnx",)),
    }


def valid_support_files() -> dict[str, bytes]:
    return {"calib.npz": calib_npz(valid_calibration()), "data.tar.gz": tar_bytes(image_members())}


def model_cases(category: str, variants: list[tuple[str, bytes, dict[str, bytes | Path]]], commands: list[str],
                 may_succeed: bool = True) -> list[FuzzCase]:
    support = valid_support_files()
    table = commands_for_model()
    cases = []
    for index, (label, model_bytes, extra) in enumerate(variants):
        command = commands[index % len(commands)]
        args, outputs = table[command]
        files = {**support, "model.onnx": model_bytes, **extra}
        cases.append(FuzzCase(category, f"{category}/{label}/{command}", files, args, outputs, may_succeed))
    return cases



def all_cases() -> list[FuzzCase]:
    """Every case, in a fixed order (the fuzz test numbers them)."""
    from fuzz_data import image_cases, npz_cases, weights_cases
    from fuzz_onnx import byte_flip_cases, external_data_cases, field_edit_cases, truncation_cases

    return (byte_flip_cases() + truncation_cases() + field_edit_cases() + external_data_cases() + npz_cases()
            + image_cases() + weights_cases())
