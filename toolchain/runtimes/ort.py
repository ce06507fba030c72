"""onnxruntime as a RuntimeSession (the CPU provider unless told otherwise).

Usage:
    session = OrtSession("r20_w8a8.onnx", threads=2)
    reference = OrtSession("r20_w8a8.onnx", threads=2, optimize=False)   # the file's Q/DQ semantics, no fused kernels
    logits = session.run(batch)
    coverage("r20_w8a8.onnx")     # runtimes.coverage's integer coverage after onnxruntime's graph optimisation
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort

from toolchain.runtimes.coverage import fusion_coverage


class OrtSession:
    def __init__(self, path: str | os.PathLike[str], threads: int, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 optimize: bool = True) -> None:
        options = ort.SessionOptions()
        if not optimize:  # every Q/DQ runs as written: what the file means, whatever a CPU's integer kernels do
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # onnxruntime's warnings (e.g. unused initializers) are not the user's concern here
        self.session = ort.InferenceSession(os.fspath(path), options, providers=list(providers))
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)  # ints, or names (str) / None for dynamic dims

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: inputs})[0])


def coverage(path: str | os.PathLike[str], threads: int) -> dict:

    fusion = fusion_coverage(onnx.load(os.fspath(path)), threads=threads)
    return {"runtime": "ort", "coverage": fusion.coverage, "mac_coverage": fusion.mac_coverage,
            "float_ops": fusion.float_ops, "fully_integer": fusion.fully_integer}
