"""Run the distributed tests (2 torchrun processes, gloo) many times in a row: a flaky abort shows up here.

Usage:
    python bench/distributed_repeat.py                 # 50 runs of tests/test_datagen_distributed.py
    python bench/distributed_repeat.py --runs 10 --out bench/results/distributed_repeat

Each run is a fresh `python -m pytest tests/test_datagen_distributed.py` (its fixture launches torchrun
twice, and one test runs `torchrun ... -m toolchain.cli generate`). Writes OUT.json and OUT.md: runs,
passes, and for any failure the tail of its output (an abort prints "terminate called ...").
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distributed_repeat")
    args = parser.parse_args()
    results = []
    for index in range(args.runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_datagen_distributed.py"],
                              cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        summary = (done.stdout.strip().splitlines() or [""])[-1]
        results.append({"run": index + 1, "returncode": done.returncode, "seconds": round(seconds, 1), "summary": summary,
                        "aborted": "terminate called" in done.stdout + done.stderr,
                        "tail": "" if done.returncode == 0 else (done.stdout + done.stderr)[-12000:]})
        print(f"run {index + 1}/{args.runs}: {summary} ({seconds:.0f} s)", flush=True)
    passed = sum(r["returncode"] == 0 for r in results)
    record = {"runs": args.runs, "passed": passed, "aborted": sum(r["aborted"] for r in results),
              "python": platform.python_version(), "machine": platform.machine(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# Distributed tests, repeated", "",
             f"`python bench/distributed_repeat.py --runs {args.runs}`: each run is a fresh pytest of "
             "`tests/test_datagen_distributed.py` (two torchrun launches of 2 gloo processes, plus a torchrun CLI generate).", "",
             f"**{passed} of {args.runs} runs passed in a row; {record['aborted']} aborted.**", "",
             "| run | result | seconds |", "|---|---|---|"]
    lines += [f"| {r['run']} | {r['summary']} | {r['seconds']} |" for r in results]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    sys.exit(0 if passed == args.runs else 1)


if __name__ == "__main__":
    main()
