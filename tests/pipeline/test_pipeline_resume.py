"""`toolchain run --resume`: a run killed mid-reconstruction continues from its finished stages and its checkpoint,
and ends with the same model as a run that was never stopped; what --resume refuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from toolchain.cli.commands import cli
from toolchain.export.zoo import default_eval_data

KILL_TIMEOUT_S = 240  # the subprocess must reach its reconstruction checkpoint within this


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("digits") / "digits.onnx"
    assert run("export", "digits_resnet", "-o", model, "--quiet").exit_code == 0
    return model


def resumable_config(folder: Path, model: Path) -> Path:
    """Generation (fast) then one W4A4 pdquant entry with enough iterations per unit to be killed between units."""
    data = {"model": str(model), "run_dir": str(folder / "run"),
            "generate": {"n": 64, "preset": "fast"},
            "quantize": [{"name": "w4", "w_bits": 4, "a_bits": 4, "reconstruct": "pdquant", "preset": "fast",
                          "recon_iterations": 60}],
            "evaluate": {"data": str(default_eval_data()), "latency_runs": 5}}
    path = folder / "resumable.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _kill_at_checkpoint(config: Path, run_dir: Path) -> None:
    """Start `toolchain run` and SIGKILL it as soon as the reconstruction has checkpointed a finished unit."""
    checkpoint = run_dir / "w4.onnx.ckpt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "toolchain.cli", "run", str(config), "--quiet"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while not checkpoint.exists():
            if process.poll() is not None:
                pytest.fail(f"the run ended (exit {process.returncode}) before its first reconstruction checkpoint: "
                            f"{process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no reconstruction checkpoint within the timeout")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL  # killed, not finished: what follows is a real resume


def test_a_run_killed_mid_reconstruction_resumes_to_the_same_model(digits_model, tmp_path):
    """Rule: after a SIGKILL during reconstruction, `run --resume` reuses the finished stages (model, calibration,
    FP32 evaluation), continues the reconstruction from its checkpoint (resumed after >= 1 unit), and writes the
    same QDQ model, bit for bit, as an uninterrupted run of the same config."""
    killed = tmp_path / "killed"
    killed.mkdir()
    config = resumable_config(killed, digits_model)
    _kill_at_checkpoint(config, killed / "run")
    state = json.loads((killed / "run" / "run.state.json").read_text())
    assert {"model", "calibration", "fp32"} <= set(state["stages"]) and "quantize:w4" not in state["stages"]

    again = run("run", config)  # without --resume an existing run directory is refused, not replaced
    assert again.exit_code == 2 and "already exists" in again.stderr
    resumed = run("run", config, "--resume", "--json", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    report = json.loads(resumed.stdout)
    assert report["resumed"]["reused_stages"] == ["model", "calibration", "fp32"]
    quantize_report = json.loads((killed / "run" / "w4.report.json").read_text())
    assert quantize_report["reconstruction"]["resumed_after_units"] >= 1
    assert not (killed / "run" / "w4.onnx.ckpt").exists()

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert run("run", resumable_config(fresh, digits_model), "--quiet").exit_code == 0
    assert (killed / "run" / "w4.onnx").read_bytes() == (fresh / "run" / "w4.onnx").read_bytes()


def test_resume_refuses_another_config_a_missing_run_and_overwrite(digits_model, tmp_path):
    """Rule: --resume needs the same config (hash checked, the folder untouched), an existing run directory, and
    cannot be combined with --overwrite; each is exit 2 with the fix named."""
    missing = run("run", "--model", digits_model, "--run-dir", tmp_path / "nothing", "--resume")
    assert missing.exit_code == 2 and "no run to resume" in missing.stderr
    both = run("run", "--model", digits_model, "--run-dir", tmp_path / "nothing", "--resume", "--overwrite")
    assert both.exit_code == 2 and "choose one" in both.stderr

    folder = tmp_path / "run"
    (folder).mkdir()
    (folder / "config.resolved.yaml").write_text("model: x\n")
    (folder / "run.state.json").write_text(json.dumps({"config_hash": "0" * 64, "stages": {"model": {}}}))
    other = run("run", "--model", digits_model, "--run-dir", folder, "--resume")
    assert other.exit_code == 2 and "another config" in other.stderr and "--overwrite" in other.stderr
    assert json.loads((folder / "run.state.json").read_text())["config_hash"] == "0" * 64  # untouched
