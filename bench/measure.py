"""Run one `toolchain` stage as its own process and measure it: wall time and peak resident memory.

Usage (from a script in bench/, whose folder is on sys.path):
    from measure import run_stage
    record = run_stage("quantize W8A8", ["quantize", "m.onnx", "--calib", "c.npz", "-o", "q.onnx"], env)
    record["seconds"], record["peak_rss_gb"], record["stdout"]

Peak memory is os.wait4's ru_maxrss of the child (kB on Linux): the largest resident set the stage
had, which a separate process measures without the benchmark's own memory. `prefix` replaces
`python -m toolchain.cli` (e.g. a torchrun launcher); ru_maxrss is then the largest single process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time


def run_stage(stage: str, args: list[str], env: dict[str, str], prefix: list[str] | None = None) -> dict:
    """One process: its wall time and peak resident memory; SystemExit with its stderr when it fails."""
    command = [*(prefix or [sys.executable, "-m", "toolchain.cli"]), *args]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{stage} failed ({process.returncode}): {stderr[-2000:]}")
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    print(f"{stage}: {seconds:.0f} s, peak {usage.ru_maxrss / 1e6:.2f} GB: {last[:300]}", flush=True)
    return {"stage": stage, "seconds": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss / 1e6, 3),
            "stdout": stdout.strip()[-600:]}
