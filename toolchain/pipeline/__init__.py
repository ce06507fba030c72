"""`toolchain run`: the whole job from one config (export -> generate -> quantize -> evaluate -> gates -> report).

Usage:
    from toolchain.pipeline import QuantizeSpec, RunConfig, run_pipeline
    result = run_pipeline(RunConfig(quantize=(QuantizeSpec(w_bits=4, a_bits=4, reconstruct="pdquant"),)))

config: the typed RunConfig; config_io: YAML/JSON files, overrides, the resolved config; rundir: the run
directory and its log; runner: the stages; measure: size and latency; report, plots: report.json/.md and figures.
"""

from toolchain.pipeline.config import CalibrationReader, EvaluateSpec, ExecutionSpec, ExportSpec, Gates, GenerateSpec, QuantizeSpec, RunConfig
from toolchain.pipeline.runner import RunResult, run_pipeline

__all__ = ["CalibrationReader", "EvaluateSpec", "ExecutionSpec", "ExportSpec", "Gates", "GenerateSpec", "QuantizeSpec",
           "RunConfig", "RunResult", "run_pipeline"]
