"""Evaluation: top-1/top-5 and agreement are exact on a tiny ONNX classifier whose predictions are computable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from toolchain.errors import DataError, PreprocessingError
from toolchain.evaluate.accuracy import evaluate
from toolchain.onnxio.preprocessing import Preprocessing

# Mean 0 / std 1: the model's pooled features are the images' mean colour / 255.
PRE = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=(4, 4))
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def _classifier(path: Path, weight: np.ndarray, bias: np.ndarray, batch: int | str = "N", size: int = 4) -> Path:
    """GlobalAveragePool -> Flatten -> Gemm: logits = mean colour @ weight.T + bias."""
    classes = weight.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"]),
            helper.make_node("Gemm", ["features", "w", "b"], ["logits"], transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(weight.astype(np.float32), "w"), numpy_helper.from_array(bias.astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _colour_folder(root: Path, layout: dict[str, list[str]]) -> Path:
    """root/<class>/<i>.png, each a solid image of the named colour."""
    for label, colours in layout.items():
        (root / label).mkdir(parents=True)
        for i, colour in enumerate(colours):
            Image.new("RGB", (4, 4), COLOURS[colour]).save(root / label / f"{i}.png")
    return root


@pytest.fixture
def colour_data(tmp_path: Path) -> Path:
    # Six images, one mislabelled: a green image in red/. The model (below) reads colours perfectly.
    return _colour_folder(tmp_path / "data", {"blue": ["blue", "blue"], "green": ["green", "green"], "red": ["red", "green"]})


# Classes in sorted folder order (blue, green, red) score the (r, g, b) channels (2, 1, 0).
COLOUR_WEIGHT = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], np.float32)


def test_top1_counts_correct_argmax_and_top5_falls_back_to_top1(tmp_path: Path, colour_data: Path) -> None:
    """top1 is the fraction of argmax == label; with fewer than 5 classes top5 equals top1."""
    model = _classifier(tmp_path / "m.onnx", COLOUR_WEIGHT, np.zeros(3))
    result = evaluate(model, colour_data, PRE, progress=False)
    assert (result.top1, result.top5, result.n, result.agreement) == (5 / 6, 5 / 6, 6, None)


def test_agreement_compares_top1_with_the_reference(tmp_path: Path, colour_data: Path) -> None:
    """agreement is the fraction of images where model and reference pick the same class."""
    model = _classifier(tmp_path / "m.onnx", COLOUR_WEIGHT, np.zeros(3))
    always_blue = _classifier(tmp_path / "ref.onnx", COLOUR_WEIGHT, np.array([10.0, 0.0, 0.0]))
    assert evaluate(model, colour_data, PRE, reference_path=model, progress=False).agreement == 1.0
    # The model says blue for the two blue images only.
    assert evaluate(model, colour_data, PRE, reference_path=always_blue, progress=False).agreement == 2 / 6


def test_top1_top5_match_numpy_on_random_data(tmp_path: Path) -> None:
    """With 8 classes and random weights, top1/top5/agreement equal a numpy computation of the same model."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 8, 50)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    weight, bias = rng.normal(size=(8, 3)), rng.normal(size=8)
    ref_weight = weight + rng.normal(scale=0.5, size=(8, 3))
    model = _classifier(tmp_path / "m.onnx", weight, bias)
    reference = _classifier(tmp_path / "r.onnx", ref_weight, bias)

    features = PRE.apply(images).astype(np.float64).mean(axis=(2, 3))
    logits, ref_logits = features @ weight.T + bias, features @ ref_weight.T + bias
    top5 = np.argsort(-logits, axis=1)[:, :5]
    result = evaluate(model, tmp_path / "d.npz", PRE, reference_path=reference, batch_size=7, progress=False)
    assert result.n == 50
    assert result.top1 == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert result.top5 == pytest.approx(np.mean((top5 == labels[:, None]).any(1)))
    assert result.agreement == pytest.approx(np.mean(logits.argmax(1) == ref_logits.argmax(1)))
    assert 0 < result.top1 < result.top5 < 1 and result.agreement < 1  # the data exercises every branch


def test_fixed_batch_model_gets_padded_batches(tmp_path: Path, colour_data: Path) -> None:
    """A model exported with batch size 4 is fed batches of 4 (the last one padded) and scores the same."""
    model = _classifier(tmp_path / "m.onnx", COLOUR_WEIGHT, np.zeros(3), batch=4)
    assert evaluate(model, colour_data, PRE, batch_size=256, progress=False).top1 == 5 / 6


def test_limit_evaluates_a_seeded_sample(tmp_path: Path, colour_data: Path) -> None:
    """limit evaluates that many images."""
    model = _classifier(tmp_path / "m.onnx", COLOUR_WEIGHT, np.zeros(3))
    assert evaluate(model, colour_data, PRE, limit=4, progress=False).n == 4


def test_result_fields_and_progress_bar(tmp_path: Path, colour_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """EvalResult.to_dict has every field; the tqdm bar goes to stderr only, and not at all with progress=False."""
    model = _classifier(tmp_path / "m.onnx", COLOUR_WEIGHT, np.zeros(3))
    result = evaluate(model, colour_data, PRE, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "6/6" in captured.err
    assert set(result.to_dict()) == {"top1", "top5", "n", "agreement", "images_per_second", "seconds"}
    assert result.images_per_second > 0 and result.seconds > 0
    assert result.n == 6 and result.agreement is None and 0.0 <= result.top1 <= result.top5 <= 1.0
    evaluate(model, colour_data, PRE, progress=False)
    assert capsys.readouterr().err == ""


def test_labels_beyond_the_model_outputs_are_an_error(tmp_path: Path, colour_data: Path) -> None:
    """A dataset with more classes than the model outputs raises DataError, not a wrong accuracy."""
    model = _classifier(tmp_path / "m.onnx", COLOUR_WEIGHT[:2], np.zeros(2))
    with pytest.raises(DataError, match=r"labels go up to 2 but .*m.onnx outputs 2 classes"):
        evaluate(model, colour_data, PRE, progress=False)


def test_input_shape_that_does_not_fit_the_preprocessing_is_an_error(tmp_path: Path, colour_data: Path) -> None:
    """A model input of another size than the preprocessing's raises PreprocessingError before running."""
    model = _classifier(tmp_path / "m.onnx", COLOUR_WEIGHT, np.zeros(3), size=8)
    with pytest.raises(PreprocessingError, match=r"input 'x' has shape \['N', 3, 8, 8\] but the preprocessing gives \(N, 3, 4, 4\)"):
        evaluate(model, colour_data, PRE, progress=False)


def test_default_batch_holds_32_mib_of_input_and_at_most_256_images() -> None:
    """Rule: without --batch-size, a batch holds at most BATCH_INPUT_BYTES of float32 input (55 images at
    3x224x224, where 256 images peaked at 7.5 GB) and at most MAX_BATCH images (all small inputs)."""
    from toolchain.evaluate.accuracy import BATCH_INPUT_BYTES, MAX_BATCH, default_batch_size

    imagenet = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(224, 224))
    cifar = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(32, 32))
    assert default_batch_size(imagenet) == BATCH_INPUT_BYTES // (4 * 3 * 224 * 224) == 55
    assert default_batch_size(cifar) == MAX_BATCH == 256
    huge = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(4096, 4096))
    assert default_batch_size(huge) == 1
