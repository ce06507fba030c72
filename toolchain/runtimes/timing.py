"""Latency of ONNX files in a runtime, timed in alternating rounds so machine drift hits every file alike.

Usage:
    quantized_ms, fp32_ms = interleaved_ms("ort", (qdq_path, fp32_path), [1, 3, 32, 32], runs=300)
    ms = sessions_ms([open_runtime("ort", p, threads=2) for p in paths], [1, 3, 32, 32], runs=200)
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from toolchain.runtimes import open_runtime


def interleaved_ms(runtime: str, paths: tuple[Path, ...], shape: list[int], runs: int, rounds: int = 10,
                   threads: int = 2) -> tuple[float, ...]:
    """Median ms per call of each file in `runtime`, timed in alternating rounds of runs/rounds calls.

    The machine's speed drifts by up to 30 % between minutes (FP32 baselines of one model measured 1.12-1.64 ms
    on this project's 2-core machine); alternating the files round by round puts the same drift on each, so
    their ratio is what the files change, not when each one ran."""

    return sessions_ms([open_runtime(runtime, path, threads=threads) for path in paths], shape, runs, rounds)


def sessions_ms(sessions: list, shape: list[int], runs: int, rounds: int = 10) -> tuple[float, ...]:
    """Median ms per call of each session (anything with .run(x)), timed in alternating rounds."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for session in sessions:
        for _ in range(max(runs // 10, 5)):
            session.run(x)
    times: list[list[float]] = [[] for _ in sessions]
    per_round = max(runs // rounds, 1)
    for _ in range(rounds):
        for session, timed in zip(sessions, times):
            for _ in range(per_round):
                start = time.perf_counter()
                session.run(x)
                timed.append(time.perf_counter() - start)
    return tuple(1000 * statistics.median(timed) for timed in times)
