"""Damaged data for the fuzz test: calibration and image .npz files, image archives, folders and images, weights.

Usage:
    cases = npz_cases() + image_cases() + weights_cases()
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from fuzz_inputs import (
    CALIB,
    DATA,
    MODEL,
    FuzzCase,
    base_model_bytes,
    calib_npz,
    image_members,
    png_bytes,
    quantize_command,
    tar_bytes,
    valid_calibration,
)


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
        args, outputs = quantize_command()
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
        args, outputs = quantize_command(calib="{DIR}/images.npz")
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
        args, outputs = quantize_command(calib=source)
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

    from toolchain.export.zoo import load_zoo_model

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


