"""Qualcomm QNN (HTP backend) through onnxruntime's plugin execution provider, with CPU fallback off.

Usage:
    session = open_session("r20_qnn.onnx", threads=2)     # GraphError when HTP does not take every node
    logits = session.run(batch)                            # batches of the model's fixed batch size
    coverage("r20_qnn.onnx")    # {"coverage": 1.0, "on_htp": True}, or the share of nodes HTP takes and the op types it leaves

`onnxruntime-qnn` (2.7 for onnxruntime 1.32) registers "QNNExecutionProvider" as a plugin library; the
HTP backend library it ships runs, on x86, as Qualcomm's emulator of the NPU (bit-exact arithmetic,
not its speed). With `session.disable_cpu_ep_fallback` a model is accepted only when every node runs on
HTP; HTP has no dynamic shapes, so the batch must be fixed (quantize with --target qnn).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from toolchain.errors import GraphError
from toolchain.runtimes import missing_runtime

_registered = False


def _qnn():
    try:
        import onnxruntime_qnn  # optional package (.[qnn]): imported only when this runtime is asked for
    except ImportError:
        raise missing_runtime("onnxruntime-qnn", "qnn") from None
    return onnxruntime_qnn


def _options(threads: int, fallback: bool) -> ort.SessionOptions:
    global _registered
    qnn = _qnn()
    if not _registered:
        ort.register_execution_provider_library("QNNExecutionProvider", qnn.get_library_path())
        _registered = True
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 4  # the EP logs every unsupported node as an error: coverage() reports them instead
    if not fallback:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.add_provider_for_devices(devices, {"backend_path": qnn.get_qnn_htp_path()})
    return options


def _check_static(model: onnx.ModelProto, path) -> None:
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise GraphError(f"{path}: input {value.name!r} has a dynamic shape, which QNN HTP does not run; "
                             "quantize with --target qnn (batch 1) or --batch N")


class QnnSession:
    def __init__(self, path: str | os.PathLike[str], threads: int) -> None:
        model = onnx.load(os.fspath(path), load_external_data=False)
        _check_static(model, path)
        session = _strict_session(path, threads)
        if session is None:
            left, _ = _cpu_ops(path, threads)  # the strict session already failed: do not open it again
            listed = ", ".join(f"{op} x{n}" for op, n in sorted(left.items()))
            raise GraphError(f"{path}: QNN HTP does not run every node ({listed} would fall back to the CPU); "
                             "quantize with --target qnn, whose layout HTP takes whole")
        self.session = session
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = list(first.shape)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: inputs})[0])


def open_session(path: str | os.PathLike[str], threads: int) -> QnnSession:
    return QnnSession(path, threads)


def _strict_session(path: str | os.PathLike[str], threads: int) -> ort.InferenceSession | None:
    """The session with CPU fallback off, or None when HTP does not take every node."""
    try:
        return ort.InferenceSession(os.fspath(path), _options(threads, fallback=False))
    except Exception as err:  # onnxruntime raises its own Fail type
        if "fallback to CPU EP has been explicitly disabled" not in str(err):
            raise
        return None


def coverage(path: str | os.PathLike[str], threads: int) -> dict:
    """Whether HTP takes every node (a session with CPU fallback off opens); when not, which op types the
    CPU would run: a session with fallback allowed, profiled for one run (onnxruntime's profiler records
    the provider of each kernel; that session also leaves the boundary Q/DQ to the CPU, so they are listed)."""
    model = onnx.load(os.fspath(path), load_external_data=False)
    _check_static(model, path)
    notes = "HTP backend emulated on x86: arithmetic of the NPU, not its speed"
    version = getattr(_qnn(), "__version__", "?")
    if _strict_session(path, threads) is not None:
        return {"runtime": "qnn", "version": version, "on_htp": True, "coverage": 1.0, "cpu_ops": {}, "notes": notes}
    cpu_ops, providers = _cpu_ops(path, threads)
    nodes = len(model.graph.node)
    return {"runtime": "qnn", "version": version, "on_htp": False,
            "coverage": (nodes - sum(cpu_ops.values())) / nodes if nodes else 0.0, "cpu_ops": dict(cpu_ops),
            "kernels": dict(providers), "notes": notes}


def _cpu_ops(path: str | os.PathLike[str], threads: int) -> tuple[Counter, Counter]:
    """(op type -> count left to the CPU, provider -> kernel count) from one profiled run with fallback allowed."""
    with tempfile.TemporaryDirectory() as folder:
        options = _options(threads, fallback=True)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "qnn")
        session = ort.InferenceSession(os.fspath(path), options)
        first = session.get_inputs()[0]
        feed = np.zeros(first.shape, np.float32)
        session.run(None, {first.name: feed})
        trace = json.loads(Path(session.end_profiling()).read_text())
    providers: Counter = Counter()
    cpu_ops: Counter = Counter()
    for event in trace:
        args = event.get("args", {})
        if event.get("cat") != "Node" or "provider" not in args or not event.get("name", "").endswith("_kernel_time"):
            continue
        providers[args["provider"]] += 1
        if args["provider"] != "QNNExecutionProvider":
            cpu_ops[args.get("op_name", "?")] += 1
    return cpu_ops, providers
