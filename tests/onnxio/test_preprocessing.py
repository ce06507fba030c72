"""Preprocessing: the metadata round trip, the pixel maths, and the errors for missing fields."""

import numpy as np
import onnx
import pytest
from onnx import helper

from toolchain.errors import PreprocessingError
from toolchain.onnxio.preprocessing import (
    Preprocessing,
    PreprocessingOverrides,
    read_preprocessing,
    resolve_preprocessing,
    write_preprocessing,
)

CIFAR = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=(32, 32), class_names=("a", "b"))


def _empty_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    return helper.make_model(graph)


def test_metadata_round_trip_is_exact():
    """What write_preprocessing stamps, read_preprocessing returns unchanged; a second stamp replaces the first."""
    model = _empty_model()
    write_preprocessing(model, Preprocessing(mean=(0.0,), std=(1.0,), input_size=(8, 8)))
    write_preprocessing(model, CIFAR)
    assert read_preprocessing(model) == CIFAR
    assert sum(p.key == "toolchain.preprocessing" for p in model.metadata_props) == 1


def test_apply_scales_normalises_and_transposes():
    """apply: uint8 NHWC RGB -> ((p/255) - mean)/std as float32 NCHW (tolerance 1e-6)."""
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    x = CIFAR.apply(images)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    want = (images[1, 5, 7, 2] / 255.0 - 0.406) / 0.225
    assert abs(x[1, 2, 5, 7] - want) < 1e-6


def test_bgr_order_reverses_channels():
    """channel_order=BGR puts the blue channel first (mean/std are given in BGR order)."""
    pre = Preprocessing(mean=(0, 0, 0), std=(1, 1, 1), input_size=(1, 1), channel_order="BGR")
    x = pre.apply(np.array([[[[10, 20, 30]]]], dtype=np.uint8))
    np.testing.assert_allclose(x.reshape(-1), np.array([30, 20, 10]) / 255.0, atol=1e-7)


@pytest.mark.parametrize("kwargs", [dict(mean=(0.5,), std=(0.5, 0.5)), dict(mean=(0.5,), std=(0.0,)),
                                    dict(mean=(0.5,), std=(0.5,), input_size=(0, 8))])
def test_invalid_fields_are_rejected(kwargs):
    """Mismatched mean/std lengths, non-positive std and empty sizes raise PreprocessingError."""
    kwargs.setdefault("input_size", (8, 8))
    with pytest.raises(PreprocessingError):
        Preprocessing(**kwargs)


def test_resolve_without_metadata_names_missing_options():
    """A file with no metadata and no options: the error names the missing options and `toolchain stamp`."""
    with pytest.raises(PreprocessingError, match=r"--mean, --std.*toolchain stamp"):
        resolve_preprocessing(None, PreprocessingOverrides(), "theirs.onnx")


def test_resolve_uses_static_input_size_and_overrides():
    """Options fill in for missing metadata; a static input shape stands in for --input-size; options override stored values."""
    pre = resolve_preprocessing(None, PreprocessingOverrides(mean=(0.5,), std=(0.25,)), "m.onnx", static_size=(28, 28))
    assert pre.input_size == (28, 28)
    overridden = resolve_preprocessing(CIFAR, PreprocessingOverrides(std=(1.0, 1.0, 1.0)), "m.onnx")
    assert overridden.std == (1.0, 1.0, 1.0) and overridden.mean == CIFAR.mean
