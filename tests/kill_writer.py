"""A writer that stops in the middle of a write and waits to be killed (the SIGKILL test's child process).

Usage:
    python tests/kill_writer.py KIND PHASE PATH      # prints READY at the chosen moment, then sleeps

KIND: model (one file), model-external (weights in a side file), calibration, checkpoint.
PHASE: mid-write (half the bytes are on disk in the temporary file), before-rename (the temporary file is
complete, os.replace not yet called), replace-N-before / replace-N-after (around the N-th os.replace of
the external-data writer: 1 = the data file, 2 = the model file).
The content written is `new_content(KIND)`; the test wrote `old_content(KIND)` there before.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def content(kind: str, version: int):
    """The object written for `kind`: version 0 is the old file, 1 the new one."""
    rng = np.random.default_rng(version)
    if kind.startswith("model"):
        import onnx
        from onnx import helper, numpy_helper

        weight = numpy_helper.from_array(rng.standard_normal((64, 64, 3, 3)).astype(np.float32), "w")
        graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], f"v{version}",
                                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64, 8, 8])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64, 6, 6])], [weight])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if kind == "calibration":
        from toolchain.data.calibration import CalibrationSet

        return CalibrationSet(rng.standard_normal((64, 3, 32, 32)).astype(np.float32), manifest={"version": version})
    import torch

    return {"identity": {"version": version}, "images": torch.from_numpy(rng.standard_normal((64, 3, 32, 32)).astype(np.float32))}


def write(kind: str, path: Path, version: int) -> None:
    if kind == "model":
        from toolchain.onnxio.files import save_model

        save_model(content(kind, version), path)
    elif kind == "model-external":
        from toolchain.onnxio.files import save_model

        save_model(content(kind, version), path, external_data_above=1)
    elif kind == "calibration":
        from toolchain.data.calibration import save_calibration

        save_calibration(path, content(kind, version))
    else:
        from toolchain.core.checkpoint import save_checkpoint

        save_checkpoint(path, content(kind, version), kind="test", version=1)


def _stop() -> None:
    print("READY", flush=True)
    time.sleep(120)


def _half_then_stop(target, data: bytes) -> None:
    with open(target, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    _stop()


def install(kind: str, phase: str) -> None:
    """Patch the writers so the process reaches `phase` and stops there."""
    import pathlib

    import toolchain.core.atomic as atomic
    import toolchain.onnxio.external_data as external

    if phase == "mid-write":
        if kind.startswith("model"):
            pathlib.Path.write_bytes = lambda self, data: _half_then_stop(self, data)  # type: ignore[method-assign]
        elif kind == "calibration":
            real_savez = np.savez

            def half_savez(handle, **arrays):
                buffer = io.BytesIO()
                real_savez(buffer, **arrays)
                handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                handle.flush()
                _stop()

            np.savez = half_savez
        else:
            import torch

            real_save = torch.save

            def half_save(obj, target):
                buffer = io.BytesIO()
                real_save(obj, buffer)
                _half_then_stop(target, buffer.getvalue())

            torch.save = half_save
        return
    real_replace = os.replace
    calls = {"n": 0}
    wanted = 1 if phase == "before-rename" else int(phase.split("-")[1])
    after = phase.endswith("-after")

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == wanted and not after:
            _stop()
        real_replace(src, dst)
        if calls["n"] == wanted and after:
            _stop()

    fake_os = type(sys)("os_with_stopping_replace")
    fake_os.__dict__.update(os.__dict__)
    fake_os.replace = replace
    atomic.os = fake_os  # type: ignore[attr-defined]
    external.os = fake_os  # type: ignore[attr-defined]


if __name__ == "__main__":
    kind, phase, target = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    install(kind, phase)
    write(kind, target, version=1)
    print("FINISHED", flush=True)
