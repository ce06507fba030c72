"""How many times one `toolchain` command parses an ONNX model and opens an onnxruntime session (in process).

Usage:
    python bench/count_loads.py run --quiet                                   # the default run
    python bench/count_loads.py quantize m.onnx --calib c.npz -o q.onnx --quiet

Counts every onnx.load / onnx.load_model_from_string (toolchain.onnxio.files parses through them) and every
onnxruntime.InferenceSession, for all the models the command touches (FP32 and quantized), and prints them on
stderr. For the "load once, check once" figures of the house issue, before and after.
"""

from __future__ import annotations

import collections
import sys

import onnx
import onnxruntime as ort

counts: collections.Counter[str] = collections.Counter()


def _counted(name: str, function):
    def wrapper(*args, **kwargs):
        counts[name] += 1
        return function(*args, **kwargs)
    return wrapper


def main() -> None:
    onnx.load = onnx.load_model = _counted("onnx.load", onnx.load)
    onnx.load_model_from_string = _counted("onnx.load_model_from_string", onnx.load_model_from_string)
    ort.InferenceSession.__init__ = _counted("onnxruntime.InferenceSession", ort.InferenceSession.__init__)
    from toolchain.cli.commands import cli

    try:
        cli.main(sys.argv[1:], standalone_mode=False)
    finally:
        print(f"model parses: {counts['onnx.load'] + counts['onnx.load_model_from_string']} "
              f"({dict(counts)}); onnxruntime sessions: {counts['onnxruntime.InferenceSession']}", file=sys.stderr)


if __name__ == "__main__":
    main()
