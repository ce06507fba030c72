"""Calibration data in the ecosystem's forms: each gives the same inputs as this project's own .npz."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from toolchain.data.forms import read_calibration_form
from toolchain.errors import DataError

INPUTS = np.random.default_rng(0).standard_normal((10, 1, 8, 8)).astype(np.float32)


def _pb_folders(root, batches, name="input"):
    for i, batch in enumerate(batches):
        folder = root / f"test_data_set_{i}"
        folder.mkdir(parents=True)
        (folder / "input_0.pb").write_bytes(numpy_helper.from_array(batch, name).SerializeToString())
    return root


def test_npz_keyed_by_the_input_name_is_read(tmp_path):
    """Rule: an .npz holding {input name: array} (ModelOpt's form) gives that array."""
    path = tmp_path / "c.npz"
    np.savez(path, input=INPUTS)
    calib = read_calibration_form(path, "input", "m.onnx")
    assert np.array_equal(calib.inputs, INPUTS) and calib.manifest["form"] == "npz keyed by input name"


def test_test_data_set_folders_are_concatenated_in_numeric_order(tmp_path):
    """Rule: test_data_set_0..11/input_0.pb are concatenated along the batch axis in numeric (not text) order;
    `limit` keeps the first inputs."""
    batches = [INPUTS[i:i + 1] for i in range(10)] + [INPUTS[:1], INPUTS[1:2]]
    root = _pb_folders(tmp_path / "pb", batches)
    calib = read_calibration_form(root, "input", "m.onnx")
    assert np.array_equal(calib.inputs, np.concatenate(batches)) and calib.manifest["sets"] == 12
    assert np.array_equal(read_calibration_form(root, "input", "m.onnx", limit=3).inputs, INPUTS[:3])


def test_a_calibration_data_reader_is_drained(tmp_path):
    """Rule: a CalibrationDataReader's batches are read until get_next() returns None."""
    class Reader:
        def __init__(self):
            self.items = iter([{"input": INPUTS[:4]}, {"input": INPUTS[4:]}])

        def get_next(self):
            return next(self.items, None)

    assert np.array_equal(read_calibration_form(Reader(), "input", "m.onnx").inputs, INPUTS)


def test_an_image_dataset_is_left_to_the_sampler(tmp_path):
    """Rule: an .npz of images and labels is not calibration inputs: None (the caller samples it)."""
    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((2, 8, 8), np.uint8), labels=np.zeros(2, np.int64))
    assert read_calibration_form(path, "input", "m.onnx") is None


@pytest.mark.parametrize("case, needle", [
    ("npz other key", "no array named 'inputs' or after the input 'input'"),
    ("pb wrong name", "no tensor is named after the input 'input'"),
    ("pb damaged", "cannot read"),
    ("reader empty", "gave no data"),
    ("reader wrong key", "not a dict with the input 'input'"),
])
def test_bad_calibration_forms_say_what_to_fix(tmp_path, case, needle):
    """Rule: each malformed form raises one DataError naming the problem."""
    if case == "npz other key":
        source = tmp_path / "c.npz"
        np.savez(source, x=INPUTS)
    elif case == "pb wrong name":
        source = _pb_folders(tmp_path / "pb", [INPUTS], name="x")
    elif case == "pb damaged":
        source = _pb_folders(tmp_path / "pb", [INPUTS])
        (source / "test_data_set_0" / "input_0.pb").write_bytes(b"\x08\xff\xff")
    else:
        class Reader:
            def get_next(self):
                return None if case == "reader empty" else {"x": INPUTS}

        source = Reader()
    with pytest.raises(DataError, match=needle):
        read_calibration_form(source, "input", "m.onnx")


def test_quantize_takes_a_test_data_set_folder(tmp_path):
    """Rule: `toolchain quantize --calib FOLDER` quantizes from test_data_set_*/input_0.pb files and gives the same
    model as the same inputs in a calibration .npz."""
    from click.testing import CliRunner

    from toolchain.cli.commands import cli
    from toolchain.data.calibration import CalibrationSet, save_calibration

    runner = CliRunner()
    model = tmp_path / "d.onnx"
    assert runner.invoke(cli, ["export", "digits_resnet", "-o", str(model), "-q"]).exit_code == 0
    root = _pb_folders(tmp_path / "pb", [INPUTS[:5], INPUTS[5:]])
    save_calibration(tmp_path / "c.npz", CalibrationSet(INPUTS))
    for calib, out in ((root, "a.onnx"), (tmp_path / "c.npz", "b.onnx")):
        result = runner.invoke(cli, ["quantize", str(model), "--calib", str(calib), "-o", str(tmp_path / out), "-q"])
        assert result.exit_code == 0, result.output
    assert onnx.load(str(tmp_path / "a.onnx")).graph == onnx.load(str(tmp_path / "b.onnx")).graph
