"""Calibration inputs in the ecosystem's forms, read into one CalibrationSet.

Usage:
    calib = read_calibration_form("calib.npz", "input", "model.onnx")           # {'input': (N,C,H,W)} (ModelOpt's form)
    calib = read_calibration_form("calib_pb/", "input", "model.onnx")           # test_data_set_*/input_*.pb
    calib = read_calibration_form(my_reader, "input", "model.onnx", limit=256)  # onnxruntime CalibrationDataReader
    calib = read_calibration_form(inputs, "input", "model.onnx")                # a float32 (N,C,H,W) numpy array
    read_calibration_form("images.tar.gz", "input", "model.onnx")               # None: an image dataset, sampled elsewhere

Besides this project's calibration .npz (`inputs`, see calib_data/README.md), a user may hold:
- an .npz keyed by the model's input name, as TensorRT Model Optimizer (ModelOpt) reads it;
- a folder of ONNX TensorProto files, `test_data_set_0/input_0.pb`, ..., as onnxruntime's tools and the ONNX
  model zoo write them (each set holds one batch; the sets are concatenated along the batch axis);
- from Python, an `onnxruntime.quantization.CalibrationDataReader` (get_next() -> {input name: array} | None),
  or the preprocessed inputs as one numpy array.
All give float32 model inputs, already preprocessed; check_calibration checks shape, dtype and values afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from toolchain.data.calibration import CalibrationSet, load_calibration, sample_calibration
from toolchain.data.images import npz_keys, read_npz
from toolchain.errors import DataError
from toolchain.onnxio.graph import image_input
from toolchain.onnxio.loaded import model_preprocessing
from toolchain.onnxio.preprocessing import PreprocessingOverrides

DEFAULT_CALIB_IMAGES = 512

NPZ_HINT = ("give a calibration .npz ('inputs', see calib_data/README.md; or keyed by the model's input name), "
            "a test_data_set_* folder of input_*.pb files, or an image dataset (.npz with 'images' and 'labels')")


def is_calibration_reader(source: Any) -> bool:
    """An object with onnxruntime's CalibrationDataReader protocol (get_next)."""
    return callable(getattr(source, "get_next", None))


def read_calibration_form(source: Any, input_name: str, model_source: str, limit: int | None = None) -> CalibrationSet | None:
    """The calibration inputs `source` holds for input `input_name`, or None when `source` is an image dataset.

    `limit`: keep the first `limit` inputs (all when None)."""
    if is_calibration_reader(source):
        return _from_reader(source, input_name, model_source, limit)
    if isinstance(source, np.ndarray):  # from Python: the preprocessed inputs themselves (check_calibration checks them)
        return _limited(source, None, {"method": "array", "form": "numpy array"}, limit)
    path = Path(source)
    if not path.exists():
        raise DataError(f"calibration data {path} does not exist")
    if path.is_dir():
        sets = tensor_set_folders(path)
        return _from_tensor_folders(path, sets, input_name, model_source, limit) if sets else None
    if path.suffix != ".npz":
        return None
    keys = npz_keys(path, "calibration data", NPZ_HINT)
    if "inputs" in keys:
        loaded = load_calibration(path)
        return _limited(loaded.inputs, loaded.labels, {**loaded.manifest, "file": str(path)}, limit)
    if input_name in keys:
        arrays = read_npz(path, "calibration data", NPZ_HINT)
        return _limited(arrays[input_name], None, {"method": "file", "form": "npz keyed by input name", "file": str(path)},
                        limit)
    if {"images", "labels"} <= set(keys):
        return None
    raise DataError(f"{path} holds {', '.join(keys) or 'nothing'} but no array named 'inputs' or after the input "
                    f"{input_name!r} of {model_source}; {NPZ_HINT}")


def load_calibration_inputs(calib: Any, proto: onnx.ModelProto, source: str, limit: int | None, seed: int,
                            overrides: PreprocessingOverrides = PreprocessingOverrides()) -> CalibrationSet:
    """A CalibrationSet from any form read_calibration_form reads (the first `limit` inputs, all when None) or from
    an image dataset (`limit` images, default 512, sampled with `seed`, preprocessed as the model says)."""
    loaded = read_calibration_form(calib, image_input(proto, source).name, source, limit)
    if loaded is not None:
        return loaded
    pre = model_preprocessing(proto, overrides, source)
    return sample_calibration(Path(calib), pre, limit if limit is not None else DEFAULT_CALIB_IMAGES, seed)


def first_inputs(calibration: CalibrationSet, limit: int | None) -> CalibrationSet:
    """The first `limit` inputs of `calibration` (all when None), as reading its file with that limit gives them."""
    return _limited(calibration.inputs, calibration.labels, calibration.manifest, limit)


def tensor_set_folders(path: Path) -> list[Path]:
    """The test_data_set_* folders under `path` (or `path` itself when it holds input_*.pb files), in numeric order."""
    if any(path.glob("input_*.pb")):
        return [path]
    folders = [p for p in path.glob("test_data_set_*") if p.is_dir()]
    return sorted(folders, key=lambda p: (len(p.name), p.name))


def _from_tensor_folders(root: Path, folders: list[Path], input_name: str, model_source: str,
                         limit: int | None) -> CalibrationSet:
    batches, count = [], 0
    for folder in folders:
        batch = _input_tensor(folder, input_name, model_source)
        batches.append(batch)
        count += len(batch)
        if limit is not None and count >= limit:
            break
    shapes = {b.shape[1:] for b in batches}
    if len(shapes) > 1:
        raise DataError(f"{root}: the test data sets hold inputs of different shapes {sorted(shapes)}; "
                        "every set must match the model input")
    inputs = np.concatenate(batches)
    return _limited(inputs, None, {"method": "file", "form": "TensorProto folders", "file": str(root),
                                   "sets": len(batches)}, limit)


def _input_tensor(folder: Path, input_name: str, model_source: str) -> np.ndarray:
    """The tensor of `folder` named `input_name`; with one unnamed file (input_0.pb), that one."""
    files = sorted(folder.glob("input_*.pb"))
    if not files:
        raise DataError(f"{folder} holds no input_*.pb file; each test_data_set_* folder holds the model's inputs "
                        "as ONNX TensorProto files")
    tensors = []
    for file in files:
        try:
            tensors.append(onnx.load_tensor(str(file)))
        except Exception as err:
            raise DataError(f"cannot read {file} as an ONNX TensorProto ({type(err).__name__}: {err}); "
                            "write it with onnx.numpy_helper.from_array(array, name).SerializeToString()") from err
    named = [t for t in tensors if t.name == input_name]
    if named:
        chosen = named[0]
    elif len(tensors) == 1 and not tensors[0].name:
        chosen = tensors[0]
    else:
        names = ", ".join(repr(t.name) for t in tensors)
        raise DataError(f"{folder}: no tensor is named after the input {input_name!r} of {model_source} "
                        f"(found {names}); name the TensorProto {input_name!r}")
    array = numpy_helper.to_array(chosen)
    return array[None] if array.ndim == 3 else array  # one image without its batch axis


def _from_reader(reader: Any, input_name: str, model_source: str, limit: int | None) -> CalibrationSet:
    batches, count = [], 0
    while limit is None or count < limit:
        item = reader.get_next()
        if item is None:
            break
        if not isinstance(item, dict) or input_name not in item:
            got = ", ".join(map(repr, item)) if isinstance(item, dict) else type(item).__name__
            raise DataError(f"the CalibrationDataReader gave {got}, not a dict with the input {input_name!r} of "
                            f"{model_source}; return {{{input_name!r}: array}} from get_next()")
        array = np.asarray(item[input_name])
        batches.append(array[None] if array.ndim == 3 else array)
        count += len(batches[-1])
    if not batches:
        raise DataError("the CalibrationDataReader gave no data (get_next() returned None at once); "
                        "rewind it or create a new one")
    shapes = {b.shape[1:] for b in batches}
    if len(shapes) > 1:
        raise DataError(f"the CalibrationDataReader gave inputs of different shapes {sorted(shapes)}")
    return _limited(np.concatenate(batches), None,
                    {"method": "file", "form": "CalibrationDataReader", "file": type(reader).__name__}, limit)


def _limited(inputs: np.ndarray, labels: np.ndarray | None, manifest: dict, limit: int | None) -> CalibrationSet:
    if limit is not None:
        inputs = inputs[:limit]
        labels = labels[:limit] if labels is not None else None
    return CalibrationSet(inputs, labels, {**manifest, "n": len(inputs)})
