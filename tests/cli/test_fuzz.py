"""Fuzzing every command that reads files: no damaged input ends in a traceback, an internal error or a file.

The inputs (tests/fuzz_inputs.py, fixed seeds) are byte flips and truncations of a small valid ONNX model,
structured edits of it (ops removed, dims and dtypes changed, initializers deleted, cycles, duplicate
names, bad attributes and metadata), external data pointing outside its folder or at short files,
calibration .npz files with wrong keys/dtypes/shapes/NaN/inf, damaged image archives, folders and images,
and damaged weights for export. Two worker processes run them through the real CLI (tests/fuzz_runner.py).

Rule for every case: exit code 0 or 1; no traceback and no exception escaping the command; never the
"internal error" path (damaged input is the user's to fix and must be named as such); on a failure one
`Error: ...` line on stderr and no output file; on success (a mutation that left a valid input, such as a
flipped weight byte) every output the command promises exists. No case leaves any other file behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from toolchain.cli.errors import INTERNAL_ERROR

from fuzz_inputs import all_cases

WORKERS = 2
MIN_CASES = 500
TIME_LIMIT_S = 600  # the run takes well under a minute on 2 cores; this only stops a hung worker


@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("fuzz")
    runner = Path(__file__).resolve().parents[1] / "fuzz_runner.py"
    env = {**os.environ, "TOOLCHAIN_LOG_DIR": str(root / "crash-logs"), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    logs = [root / f"worker{w}.jsonl" for w in range(WORKERS)]
    workers = [subprocess.Popen([sys.executable, str(runner), str(root / "cases"), str(w), str(WORKERS), str(log)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for w, log in enumerate(logs)]
    failures = []
    for worker, log in zip(workers, logs):
        _, stderr = worker.communicate(timeout=TIME_LIMIT_S)
        if worker.returncode != 0:
            last = log.read_text().splitlines()[-1:] if log.exists() else []
            failures.append(f"worker exited {worker.returncode} after {last}: {stderr[-3000:]}")
    assert not failures, "\n".join(failures)
    return [json.loads(line) for log in logs for line in log.read_text().splitlines()]


def test_every_case_ran_and_there_are_enough(fuzz_results):
    """All generated cases ran (none lost to a dying worker), at least 500 of them, in every category."""
    expected = all_cases()
    assert len(expected) >= MIN_CASES
    assert sorted(r["index"] for r in fuzz_results) == list(range(len(expected)))
    categories = Counter(r["category"] for r in fuzz_results)
    assert set(categories) == {"onnx-bytes", "onnx-truncated", "onnx-fields", "onnx-external", "npz", "images", "weights"}


def _violation(result: dict) -> str | None:
    text = result["stdout"] + result["stderr"]
    if result["exception"] is not None:
        return f"raised {result['exception']}"
    if "Traceback" in text:
        return "printed a traceback"
    if INTERNAL_ERROR in text:
        return "ended in an internal error: " + result["stderr"].strip().splitlines()[-1]
    if result["exit_code"] not in (0, 2):
        return f"exit code {result['exit_code']}"
    if result["new_files"]:
        return f"left files behind: {result['new_files']}"
    if result["exit_code"] == 0:
        if not result["may_succeed"]:
            return "succeeded on input it must refuse"
        missing = sorted(set(result["expected_outputs"]) - set(result["outputs"]))
        return f"succeeded without writing {missing}" if missing else None
    errors = [line for line in result["stderr"].splitlines() if line.startswith("Error: ")]
    if len(errors) != 1:
        return f"{len(errors)} 'Error:' lines on stderr: {result['stderr'][-500:]!r}"
    if result["outputs"]:
        return f"failed but wrote {result['outputs']}"
    return None


def test_no_case_breaks_the_rule(fuzz_results):
    """No traceback, no internal error, exit 0/1, one Error line and no output on failure, nothing left behind."""
    broken = [f"{r['name']}: {why}" for r in fuzz_results if (why := _violation(r)) is not None]
    assert not broken, f"{len(broken)} of {len(fuzz_results)} cases broke the rule:\n" + "\n".join(broken[:40])


# Inputs that once ended in a traceback (all 245 failures of the first run fell into these kinds), with what the
# one-line error must now say.
REGRESSIONS = {
    "onnx-external/parent-escape/quantize": "tensor 'w' points its external data at '../../../etc/hostname', outside",
    "onnx-external/absolute/inspect": "tensor 'w' points its external data at '/etc/hostname', outside",
    "onnx-external/symlink-outside/quantize": "outside the model's folder (a symbolic link?)",
    "onnx-bytes/060/inspect": "is not valid UTF-8",
    "onnx-bytes/057/evaluate": "is not valid UTF-8",
    "npz/truncated-half/quantize": "BadZipFile",
    "npz/flipped-00/quantize": "Bad CRC-32",
    "npz/npy-not-npz/quantize": "a single .npy array, not an .npz archive",
    "npz/not-zip/quantize": "not a zip archive",
    "npz/manifest-list/quantize": "'manifest' is not a JSON object",
    "npz/scalar/quantize": "'inputs' is a single value",
    "onnx-fields/meta-list/stamp": "preprocessing metadata is list, not a JSON object",
    "onnx-fields/meta-null/inspect": "preprocessing metadata is NoneType",
    "onnx-fields/negative-variance/generate": "is NaN or infinite on a zero input",
    "onnx-fields/inf-variance/generate": "running variance values that are NaN, infinite or negative",
    "onnx-fields/nan-weights/quantize": "is NaN or infinite on the first calibration input",
    "onnx-fields/gemm-alpha-nan/quantize": "is NaN or infinite",
    "onnx-fields/dims-w-4x2x3x3/quantize": "onnxruntime cannot run",
    "onnx-fields/dtype-w-BAD-99/quantize": "tensor 'w' has an unknown element type (99)",
    "onnx-fields/dims-only-w/quantize": "tensor 'w' of shape [4, 1, 3, 4]",
    "onnx-fields/bn-epsilon-neg/generate": "has epsilon -1.0",
    "onnx-fields/cycle/quantize": "topologically sorted",
    "onnx-fields/dims-fc_w-3x5/generate": "onnxruntime cannot load",
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_inputs_that_once_broke_a_command_are_named_errors(fuzz_results, name):
    """Each input that once ended in a traceback now ends in exit 2 and the one-line error that names its problem."""
    result = next(r for r in fuzz_results if r["name"] == name)
    assert result["exit_code"] == 2 and REGRESSIONS[name] in result["stderr"], result["stderr"]


def test_a_graph_output_without_shape_is_quantized(fuzz_results):
    """The output declared without a shape (once: RuntimeError from onnx.checker) quantizes; its shape is inferred."""
    result = next(r for r in fuzz_results if r["name"] == "onnx-fields/output-no-shape/quantize")
    assert result["exit_code"] == 0, result["stderr"]
