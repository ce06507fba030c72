"""The outputs a refactoring must leave byte-identical, made by one code tree, with their sha256.

Usage:
    python bench/identity.py --out /tmp/before.json                       # this checkout
    python bench/identity.py --code /tmp/old-tree --out /tmp/old.json     # another tree (a git worktree)
    python bench/identity.py --compare /tmp/old.json /tmp/new.json        # the pairs; exit 1 on a difference

What it makes (each stage its own process, `python -m toolchain.cli` with PYTHONPATH = the tree):
- ResNet-20 exported from ../shared/weights, and its DGH calibration set (64 images, seed 0, preset fast);
- ResNet-20 W8A8 and W4A4 pdquant (preset fast) quantized from that one calibration file;
- DGH images: 16, seed 3, preset fast;
- the default `toolchain run` (the built-in digits model): every .onnx it writes and its calibration images.
ONNX files are hashed as written; calibration sets by their image array (the .npz manifest carries times).
Needs ../shared (or TOOLCHAIN_SHARED); a run takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _toolchain(code: Path, args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-m", "toolchain.cli", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"toolchain {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _images_hash(path: Path) -> str:
    with np.load(path) as data:
        key = "images" if "images" in data.files else data.files[0]
        return hashlib.sha256(np.ascontiguousarray(data[key]).tobytes()).hexdigest()


def make(code: Path, shared: Path, work: Path) -> dict[str, str]:
    """sha256 of every output above, keyed by a name that says what it is."""
    model, calib = work / "resnet20.onnx", work / "resnet20_dgh64.npz"
    _toolchain(code, ["export", "resnet20_cifar10", "--weights", str(shared / "weights" / "resnet20-12fca82f.th"),
                      "-o", str(model)])
    _toolchain(code, ["generate", str(model), "--method", "dgh", "--preset", "fast", "-n", "64", "--seed", "0",
                      "-o", str(calib)])
    hashes = {"resnet20.onnx": _file_hash(model), "resnet20 DGH 64 images (seed 0, fast)": _images_hash(calib)}
    for name, bits in (("W8A8", ["--w-bits", "8", "--a-bits", "8"]),
                       ("W4A4-pdquant-fast", ["--w-bits", "4", "--a-bits", "4", "--reconstruct", "pdquant",
                                              "--preset", "fast"])):
        out = work / f"resnet20_{name}.onnx"
        _toolchain(code, ["quantize", str(model), "--calib", str(calib), *bits, "-o", str(out), "--quiet"])
        hashes[f"resnet20 {name}"] = _file_hash(out)
    images = work / "dgh16_s3.npz"
    _toolchain(code, ["generate", str(model), "--method", "dgh", "--preset", "fast", "-n", "16", "--seed", "3",
                      "-o", str(images)])
    hashes["resnet20 DGH 16 images (seed 3, fast)"] = _images_hash(images)
    run_dir = work / "run"
    _toolchain(code, ["run", "--run-dir", str(run_dir), "--quiet"])
    for path in sorted(run_dir.rglob("*.onnx")):
        hashes[f"default run {path.relative_to(run_dir)}"] = _file_hash(path)
    hashes["default run calibration images"] = _images_hash(run_dir / "calibration.npz")
    return hashes


def compare(old: Path, new: Path) -> int:
    before, after = json.loads(old.read_text())["sha256"], json.loads(new.read_text())["sha256"]
    differ = 0
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name, "missing"), after.get(name, "missing")
        differ += a != b
        print(f"{'same' if a == b else 'DIFFERENT'}  {name}: {a[:16]} {b[:16]}")
    return 1 if differ else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="the tree to run (default: this checkout)")
    parser.add_argument("--out", type=Path, help="where to write the hashes (JSON)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        raise SystemExit(compare(*args.compare))
    if args.out is None:
        parser.error("--out is required unless --compare is given")
    shared = Path(os.environ.get("TOOLCHAIN_SHARED", ROOT.parent / "shared"))
    with tempfile.TemporaryDirectory() as tmp:
        hashes = make(args.code.resolve(), shared, Path(tmp))
    commit = subprocess.run(["git", "-C", str(args.code), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    args.out.write_text(json.dumps({"code": commit, "sha256": hashes}, indent=1))
    for name, digest in hashes.items():
        print(f"{digest}  {name}")


if __name__ == "__main__":
    main()
