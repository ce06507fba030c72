"""Run fuzz cases through the real CLI in one process and record what each did (the fuzz test's worker).

Usage:
    python tests/fuzz_runner.py ROOT WORKER WORKERS OUT.jsonl    # cases i with i % WORKERS == WORKER

Each case runs in its own folder ROOT/<index>, through click's CliRunner (stdout and stderr apart). A
line of JSON per case is flushed as soon as it finishes, so a worker that dies (a crash in native code)
still tells which case it was on.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_cases(root: Path, worker: int, workers: int, out: Path) -> None:
    import torch
    from click.testing import CliRunner

    from toolchain.cli.commands import cli

    from fuzz_inputs import all_cases

    torch.set_num_threads(1)
    cases = all_cases()
    with open(out, "a", buffering=1) as log:
        for index, case in enumerate(cases):
            if index % workers != worker:
                continue
            folder = root / f"{index:04d}"
            folder.mkdir(parents=True)
            case.write(folder)
            before = {p.relative_to(folder).as_posix() for p in folder.rglob("*")}
            result = CliRunner().invoke(cli, case.argv(folder), catch_exceptions=True)
            after = {p.relative_to(folder).as_posix() for p in folder.rglob("*")}
            exception = None
            if result.exc_info is not None and result.exc_info[0] is not SystemExit:
                exception = f"{result.exc_info[0].__name__}: {result.exc_info[1]}"
            log.write(json.dumps({
                "index": index, "name": case.name, "category": case.category, "exit_code": result.exit_code,
                "stdout": result.stdout[-2000:], "stderr": result.stderr[-2000:], "exception": exception,
                "outputs": [o for o in case.outputs if (folder / o).exists()], "expected_outputs": list(case.outputs),
                "new_files": sorted(after - before - set(case.outputs)), "may_succeed": case.may_succeed,
            }) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_cases(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
