"""The default `toolchain run` of two code trees, timed in alternation: a speed ratio measured in one sitting.

Usage:
    python bench/interleaved_run.py --old /tmp/old-tree --new . --repeats 3      # the machine alone
    python bench/interleaved_run.py --old A --new B --out bench/results/x.json  # also write the figures

Each repeat runs the old tree's `python -m toolchain.cli run` and then the new tree's (PYTHONPATH = the tree, a
fresh run directory each time), so drift in the machine's speed falls on both alike. Prints each wall time and
the medians; the run's own outputs are discarded (bench/identity.py compares those).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _timed_run(code: Path, run_dir: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(code)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "toolchain.cli", "run", "--run-dir", str(run_dir), "--quiet"],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{code}: toolchain run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the code tree before (a git worktree)")
    parser.add_argument("--new", type=Path, required=True, help="the code tree after")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the wall times and medians here (JSON)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as work:
        for i in range(args.repeats):
            for label, code in (("old", args.old), ("new", args.new)):
                seconds = _timed_run(code.resolve(), Path(work) / f"{label}{i}")
                times[label].append(round(seconds, 2))
                print(f"repeat {i + 1} {label}: {seconds:.2f} s", file=sys.stderr)
    medians = {label: statistics.median(values) for label, values in times.items()}
    print(f"median old {medians['old']:.2f} s, new {medians['new']:.2f} s, new/old {medians['new'] / medians['old']:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"old": str(args.old), "new": str(args.new), "wall_s": times,
                                        "median_s": medians}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
