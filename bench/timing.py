"""The benchmarks' latency helpers: toolchain.runtimes.timing (alternating rounds, median ms per call).

Usage (from a script in bench/, whose folder is on sys.path):
    from timing import interleaved_ms
    quantized_ms, fp32_ms = interleaved_ms("ort", (qdq_path, fp32_path), [1, 3, 32, 32], runs=300)
"""

from toolchain.runtimes.timing import interleaved_ms, sessions_ms

__all__ = ["interleaved_ms", "sessions_ms"]
