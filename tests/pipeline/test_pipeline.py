"""`toolchain run` as a user runs it: the default job, its run directory and report, determinism, exit codes.

The default run (export, 128 DGH images, W8A8 and W4A4 pdquant on the digits model, about 21 s on 2 cores)
runs twice in this module: once for its outputs, once more for the determinism rule. The other runs use a
small config (calibration given, fast presets) that takes a few seconds.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from toolchain import api
from toolchain.cli.commands import cli
from toolchain.pipeline import EvaluateSpec, Gates, QuantizeSpec, RunConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMING_KEYS = {"timing", "seconds", "wall_time_s", "created", "optimisation_time_s", "image_iterations_per_s",
               "images_per_second"}


def run(*args, env: dict | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def without_timing(value):
    """`value` with every timing field (TIMING_KEYS, at any depth) removed."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("default") / "run"
    result = run("run", "--run-dir", folder, "--json")
    assert result.exit_code == 0, result.output
    return folder, json.loads(result.stdout)


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    """The digits model and 64 of its DGH calibration inputs (from the default model's fast generation)."""
    folder = tmp_path_factory.mktemp("digits")
    model = folder / "digits.onnx"
    assert run("export", "digits_resnet", "-o", model, "--quiet").exit_code == 0
    calib = folder / "calib.npz"
    result = run("generate", model, "-n", 64, "--preset", "fast", "-o", calib, "--quiet")
    assert result.exit_code == 0, result.output
    return model, calib


def small_config(folder: Path, model: Path, calib: Path, **extra) -> Path:
    """A fast config file: given model and calibration, one W8A8 model, few latency runs."""
    data = {"model": str(model), "calibration": str(calib), "run_dir": str(folder / "run"),
            "quantize": [{"name": "w8", "w_bits": 8, "a_bits": 8}],
            "evaluate": {"data": str(api_default_data()), "latency_runs": 20}, **extra}
    path = folder / "small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def api_default_data() -> Path:
    from toolchain.export.zoo import default_eval_data

    return default_eval_data()


# ------------------------------------------------------------------------------------------ the default run


def test_default_run_writes_every_output_and_keeps_the_accuracy(default_run):
    """Rule: the default run writes the models, calibration set, resolved config, reports, plots and log into
    its run directory; W8A8 is within 2 points of FP32 and fully integer; W4A4 is reconstructed by pdquant."""
    folder, report = default_run
    for name in ("digits_resnet.onnx", "calibration.npz", "config.resolved.yaml", "report.json", "report.md", "run.log",
                 "W8A8.onnx", "W8A8.report.json", "W4A4-pdquant.onnx", "W4A4-pdquant.report.json"):
        assert (folder / name).is_file(), name
    models = {m["name"]: m for m in report["models"]}
    fp32 = report["evaluation"]["fp32"]["top1"]
    assert fp32 >= 0.97 and models["W8A8"]["top1"] >= fp32 - 0.02 and models["W8A8"]["coverage"]["ops"] == 1.0
    pd = models["W4A4-pdquant"]
    assert pd["reconstruct"] == "pdquant" and len(pd["reconstruction"]) >= 3 and pd["top1"] >= fp32 - 0.05
    assert pd["size"]["bytes"] < models["W8A8"]["size"]["bytes"] < pd["size"]["fp32"]
    assert "quantize W4A4-pdquant" in (folder / "run.log").read_text()


def test_default_report_records_versions_seeds_and_config_hash(default_run):
    """Rule: the report names the versions of the toolchain, onnx, onnxruntime and torch, the seeds, and the hash
    of the resolved config."""
    from toolchain.pipeline.config_io import config_from_mapping, config_hash, read_config_file

    folder, report = default_run
    for package in ("toolchain", "onnx", "onnxruntime", "torch"):
        assert report["toolchain"][package], package
    assert report["seeds"] == {"generate": 0, "evaluate": 0, "quantize": {"W8A8": 0, "W4A4-pdquant": 0}}
    resolved = config_from_mapping(read_config_file(folder / "config.resolved.yaml"))
    assert report["config_hash"] == config_hash(resolved) and len(report["config_hash"]) == 64


def test_report_json_reads_back_as_the_typed_report_key_for_key(default_run):
    """Rule: report.json is RunReport.to_dict(): read back with RunReport.from_dict and written again, it gives the same
    keys in the same order and the same values (schema_version first), and readers see them as fields."""
    from toolchain.pipeline.run_report import SCHEMA_VERSION, RunReport

    folder, _ = default_run
    written = json.loads((folder / "report.json").read_text())
    typed = RunReport.from_dict(written)
    again = json.loads(json.dumps(typed.to_dict(), default=float))
    assert again == written and json.dumps(again) == json.dumps(written)  # same values and the same key order
    assert written["schema_version"] == SCHEMA_VERSION and next(iter(written)) == "schema_version"
    assert [m.name for m in typed.models] == ["W8A8", "W4A4-pdquant"] and typed.models[0].size.fp32 > 0
    assert typed.evaluation is not None and typed.models[0].top1 == written["models"][0]["top1"]


def test_every_plot_the_report_links_exists_and_is_a_valid_png(default_run):
    """Rule: each image report.md links is a file in the run directory that PIL reads as a whole PNG; the default
    run draws all six figures (accuracy, layer SQNR, reconstruction, generation, images, coverage)."""
    import re

    folder, _ = default_run
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (folder / "report.md").read_text())
    assert sorted(linked) == sorted(f"{n}.png" for n in ("accuracy", "layer_sqnr", "reconstruction", "generation",
                                                          "images", "coverage"))
    for name in linked:
        path = folder / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        with Image.open(path) as image:
            image.verify()  # raises on a truncated or damaged file
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 200


def test_default_run_is_deterministic(default_run):
    """Rule: the same config and seed on the same machine give byte-identical QDQ models and calibration inputs,
    and reports that differ only in timing fields (run again into the same run directory with --overwrite)."""
    folder, first_report = default_run
    first = folder.parent / "first"
    shutil.copytree(folder, first)
    result = run("run", "--run-dir", folder, "--overwrite", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    for name in ("W8A8.onnx", "W4A4-pdquant.onnx", "digits_resnet.onnx"):
        assert (folder / name).read_bytes() == (first / name).read_bytes(), name
    assert np.load(folder / "calibration.npz")["inputs"].tobytes() == np.load(first / "calibration.npz")["inputs"].tobytes()
    second_report = json.loads(result.stdout)
    assert without_timing(second_report) == without_timing(first_report)
    for name in ("W8A8.report.json", "W4A4-pdquant.report.json"):
        a, b = (json.loads((f / name).read_text()) for f in (first, folder))
        assert without_timing(a) == without_timing(b), name
    a, b = (yaml.safe_load((f / "config.resolved.yaml").read_text()) for f in (first, folder))
    assert a == {**b, "overwrite": False}  # the second run was told to overwrite; nothing else differs


# -------------------------------------------------------------------------------------------------- exit codes


def test_exit_0_and_the_table_on_stdout(digits_files, tmp_path):
    """Rule: a good run exits 0 and prints its table (FP32 and each model) and the report's path on stdout."""
    config = small_config(tmp_path, *digits_files)
    result = run("run", config)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model") and lines[1].startswith("FP32") and lines[2].startswith("w8")
    assert lines[-1].startswith(f"report: {tmp_path / 'run' / 'report.md'}")


def test_exit_2_for_a_bad_config_key_naming_it_and_leaving_nothing(digits_files, tmp_path):
    """Rule: an unknown key is bad input: exit 2, one line naming the key and the likely one, no run directory."""
    config = small_config(tmp_path, *digits_files, generate={"iteratons": 5})
    result = run("run", config)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "generate.'iteratons'" in line and "did you mean 'iterations'" in line
    assert not (tmp_path / "run").exists()


def test_exit_2_when_the_run_directory_exists_without_overwrite(digits_files, tmp_path):
    """Rule: an existing run directory is never replaced without --overwrite, and --overwrite never deletes a folder
    that is not a run directory."""
    config = small_config(tmp_path, *digits_files)
    assert run("run", config, "--quiet").exit_code == 0
    again = run("run", config)
    assert again.exit_code == 2 and "pass --overwrite" in again.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = run("run", config, "--run-dir", mine, "--overwrite")
    assert refused.exit_code == 2 and "not a run directory" in refused.stderr and (mine / "notes.txt").is_file()


def test_exit_3_when_a_gate_fails_keeping_the_run(digits_files, tmp_path):
    """Rule: a failed accuracy gate exits 3 with one line naming the model, the measure and the bound; the run
    directory stays, and its report says which gate failed. W2A2 without reconstruction loses far more than 5 points."""
    config = small_config(tmp_path, *digits_files, quantize=[{"name": "w2", "w_bits": 2, "a_bits": 2}])
    result = run("run", config, "--max-drop", "0.05")
    assert result.exit_code == 3, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: accuracy gate failed: w2: top-1 drop against FP32") and "max_drop 0.05" in line
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["gates"]["passed"] is False and report["models"][0]["gates"]["failures"]
    assert "Accuracy gate FAILED" in (tmp_path / "run" / "report.md").read_text()


def test_a_passing_gate_exits_0(digits_files, tmp_path):
    """Rule: gates that hold do not fail the run (W8A8 keeps the digits' top-1 within 5 points)."""
    config = small_config(tmp_path, *digits_files)
    result = run("run", config, "--max-drop", "0.05", "--min-top1", "0.9", "--min-agreement", "0.9", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["gates"] == {"passed": True, "failures": []}


def test_exit_1_for_an_internal_error_removing_the_run_directory(digits_files, tmp_path, monkeypatch):
    """Rule: a bug inside a stage exits 1 naming the log file, and leaves no partial run directory."""
    from toolchain.pipeline import runner

    def broken(self, models):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runner._Stages, "latency", broken)
    config = small_config(tmp_path, *digits_files)
    result = run("run", config, env={"TOOLCHAIN_LOG_DIR": str(tmp_path / "logs")})
    assert result.exit_code == 1 and "internal error" in result.stderr and "ZeroDivisionError" in result.stderr
    assert not (tmp_path / "run").exists()


def test_exit_codes_are_documented_in_the_help():
    """Rule: `toolchain --help` and `toolchain run --help` list the exit codes 0, 1, 2 and 3."""
    for args in (["--help"], ["run", "--help"]):
        text = " ".join(run(*args).output.split())
        for code in (r"\b0 success", r"\b1 internal error", r"\b2 (usage error or )?bad (config or )?input",
                     r"\b3 an accuracy gate failed"):
            assert re.search(code, text), (args, code)


# ------------------------------------------------------------------------------------------- config and flags


def test_flags_and_set_override_the_file_and_the_resolved_config_says_so(digits_files, tmp_path):
    """Rule: command-line flags and --set win over the config file, and config.resolved.yaml records the result
    (here a JSON config file, so both file forms are read)."""
    model, calib = digits_files
    data = {"model": str(model), "calibration": str(calib), "quantize": [{"name": "w8"}],
            "evaluate": {"data": str(api_default_data()), "latency_runs": 0}, "gates": {"max_drop": 0.5}}
    config = tmp_path / "small.json"
    config.write_text(json.dumps(data))
    result = run("run", config, "--run-dir", tmp_path / "r", "--max-drop", "0.3", "--set", "quantize.0.calib_limit=32",
                 "--set", "quantize.*.calibrator=minmax", "--quiet")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load((tmp_path / "r" / "config.resolved.yaml").read_text())
    assert resolved["gates"]["max_drop"] == 0.3 and resolved["quantize"][0]["calib_limit"] == 32
    assert resolved["quantize"][0]["calibrator"] == "minmax" and resolved["run_dir"] == str(tmp_path / "r")
    report = json.loads((tmp_path / "r" / "w8.report.json").read_text())
    assert report["calibration"]["n"] == 32 and report["config"]["calibrator"] == "minmax"


def test_quiet_prints_nothing_on_success(digits_files, tmp_path):
    """Rule: --quiet prints nothing at all on success: no table, no stage lines, no progress bars."""
    result = run("run", small_config(tmp_path, *digits_files), "--quiet")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""


def test_log_level_warning_hides_the_stage_lines(digits_files, tmp_path):
    """Rule: `run` shows its stage lines at the default level (info) and not with --log-level warning."""
    config = small_config(tmp_path, *digits_files)
    shown = run("run", config)
    assert "calibrate" in shown.stderr and "quantize w8" in shown.stderr
    hidden = run("run", config, "--overwrite", "--log-level", "warning")
    assert hidden.exit_code == 0 and "quantize w8" not in hidden.stderr


# ------------------------------------------------------------------------------------------------- Python API


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an array, 16 inputs per call."""

    def __init__(self, inputs: np.ndarray, name: str) -> None:
        self.batches = iter([{name: inputs[i:i + 16]} for i in range(0, len(inputs), 16)])

    def get_next(self):
        return next(self.batches, None)


def test_python_api_runs_with_a_calibration_data_reader(digits_files, tmp_path):
    """Rule: api.run takes a typed RunConfig whose calibration is a CalibrationDataReader; the run uses exactly the
    reader's inputs and returns the result without raising for a failed gate."""
    model, calib = digits_files
    inputs = np.load(calib)["inputs"]
    config = RunConfig(model=str(model), calibration=_Reader(inputs, "input"), run_dir=str(tmp_path / "api"),
                       quantize=(QuantizeSpec(name="w8"),), evaluate=EvaluateSpec(data=str(api_default_data()), latency_runs=0),
                       gates=Gates(min_top1=1.0))
    result = api.run(config, progress=False)
    assert np.array_equal(np.load(tmp_path / "api" / "calibration.npz")["inputs"], inputs)
    assert result.report["calibration"]["form"] == "CalibrationDataReader"
    assert not result.passed and result.exit_code == 3 and "min_top1 1.0" in result.failures[0]
    assert "<CalibrationDataReader _Reader>" in (tmp_path / "api" / "config.resolved.yaml").read_text()


def test_run_under_torchrun_is_refused(tmp_path):
    """Rule: `toolchain run` under torchrun (WORLD_SIZE > 1) exits 2 saying which commands scale out, before any work."""
    result = run("run", "--run-dir", tmp_path / "r", env={"WORLD_SIZE": "2"})
    assert result.exit_code == 2 and "torchrun scales out its stages" in result.stderr and not (tmp_path / "r").exists()


def test_a_damaged_model_file_exits_2_and_leaves_no_run_directory(tmp_path):
    """Rule: bad input found mid-run (a truncated .onnx) is one line naming the file, exit 2, and the run directory
    that was started is removed again."""
    model = tmp_path / "cut.onnx"
    model.write_bytes(b"\x08\x07\x12\x04abc")
    result = run("run", "--model", model, "--run-dir", tmp_path / "r")
    assert result.exit_code == 2 and str(model) in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_a_mixed_precision_entry_reports_its_bits_per_layer(digits_files, tmp_path):
    """Rule: a quantize entry with weight_bits_budget (and a_bits_budget) is made under those budgets and report.md
    lists its bits and sensitivities per layer (and per activation tensor); the size column counts its weights at
    their bits."""
    config = small_config(tmp_path, *digits_files, quantize=[{"weight_bits_budget": 3.5, "a_bits_budget": 6}])
    result = run("run", config, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    model = json.loads(result.stdout)["models"][0]
    assert model["name"] == "W3.5mixA6mix" and model["mixed_precision"]["size_bits"] <= model["mixed_precision"]["budget_bits"]
    assert model["mixed_precision_activations"]["average_bits"] <= 6
    text = (tmp_path / "run" / "report.md").read_text()
    assert "### W3.5mixA6mix: bits per layer under the budget" in text and "| KL at 2 bits |" in text
    assert "### W3.5mixA6mix: activation bits per tensor under the budget" in text and "| KL at 4 bits |" in text
    assert model["size"]["weights"] * 8 <= model["mixed_precision"]["budget_bits"]
