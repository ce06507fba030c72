"""One timed measurement of a torch stage, run by bench/torch_speed.py with either code version on PYTHONPATH.

Usage (the driver runs these; by hand for a single look):
    PYTHONPATH=. python bench/torch_speed_worker.py generate --model m.onnx --iterations 6
    PYTHONPATH=. python bench/torch_speed_worker.py reconstruct --model m.onnx --calib c.npz --units 2 [--phases]
    PYTHONPATH=. python bench/torch_speed_worker.py profile --model m.onnx --steps 2 [--accelerated]

It imports only what the code before the speed work also has (datagen.generate, datagen.engine.Engine,
recon.engine.find_units, the CLI), so the same file measures the old code and the new one. Each mode prints
one JSON line on stdout. Generation: the real `generate` (preset cpu, 64 images, batch 32) with every
optimiser step timed (Engine.step wrapped); the first two steps carry the start-up (a compile, the first
touch of memory) and are reported apart. Reconstruction: the real `toolchain quantize --reconstruct pdquant
--preset cpu` with the partition cut to its first N units (find_units wrapped), whose seconds the report
records. Profile: torch.profiler over eager steps, self time per aten op (the driver groups them).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch


def _module(new: str, old: str):
    """A toolchain module by its path since the stage folders (#31), or its path before, for older code trees."""
    import importlib

    try:
        return importlib.import_module(new)
    except ModuleNotFoundError:
        return importlib.import_module(old)

def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def generate_mode(args: argparse.Namespace) -> dict:
    from dataclasses import replace

    from toolchain.generate import engine as engine_module
    from toolchain.generate.config import preset
    from toolchain.generate.generate import generate
    from toolchain.onnxio.preprocessing import read_preprocessing

    model = onnx.load(args.model)
    pre = read_preprocessing(model)
    times: list[float] = []
    original = engine_module.Engine.step

    def timed(self, j):  # the optimiser step the issue counts, as the code under test runs it
        start = time.perf_counter()
        value = original(self, j)
        times.append(time.perf_counter() - start)
        return value

    engine_module.Engine.step = timed
    config = replace(preset("cpu", "dgh"), iterations=args.iterations)
    start = time.perf_counter()
    calib = generate(model, pre, "dgh", args.n, config, seed=0, progress=False)
    wall = time.perf_counter() - start
    steady = times[2:]
    batch = config.batch_size
    return {"mode": "generate", "steps": len(times), "batch": batch, "start_up_s": round(sum(times[:2]), 2),
            "step_s_median": round(statistics.median(steady), 3),
            "image_iteration_s": round(statistics.median(steady) / batch, 4),
            "wall_s": round(wall, 1), "peak_rss_gb": peak_rss_gb(),
            "acceleration": calib.manifest.get("acceleration", "NCHW, eager (before)"),
            "bn_distance": calib.manifest["losses"]["final"].get("bn_distance")}


def reconstruct_mode(args: argparse.Namespace) -> dict:
    cli = _module("toolchain.cli.commands", "toolchain.cli").cli
    recon_engine = _module("toolchain.quantize.reconstruct.engine", "toolchain.recon.engine")

    original = recon_engine.find_units

    def first_units(*a, **k):
        partition = original(*a, **k)
        partition.units[:] = partition.units[:args.units]
        if phases is not None:  # what loading, calibration and the FP logits left
            phases["peak raised by"]["before the units"] = peak_rss_gb()
        return partition

    recon_engine.find_units = first_units
    phases = _time_phases(recon_engine) if args.phases else None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        argv = ["quantize", args.model, "--calib", args.calib, "--w-bits", "4", "--a-bits", "8", "--reconstruct",
                "pdquant", "--preset", "cpu", "--recon-iterations", str(args.iterations), "-o", str(out),
                *args.quantize_option]
        start = time.perf_counter()
        try:
            cli.main(argv, standalone_mode=False)
        except SystemExit as exit_:
            if exit_.code:
                raise
        wall = time.perf_counter() - start
        report = json.loads(out.with_suffix(".report.json").read_text())
    recon = report["reconstruction"]
    units = recon["units"]
    batch = 2 * recon["config"]["batch_size"]  # pdquant: the QDrop half and the PD half
    seconds = [u["seconds"] for u in units]
    image = onnx.load(args.model).graph.input[0].name
    detail = [{"weights": u["weights"], "pd_term": u.get("pd_term", False), "reads_image": u["input"] == image,
               "distribution_correction": u.get("distribution_correction", False)} for u in units]
    config = recon["config"]
    work = {"iterations": args.iterations, "batch_size": config["batch_size"], "dc_steps": config["dc_steps"],
            "samples": int(np.load(args.calib)["inputs"].shape[0])}
    return {"mode": "reconstruct", "units": len(units), "unit_seconds": seconds, "recon_s": recon["seconds"],
            "unit_detail": detail, "work": work,
            "iterations": args.iterations, "batch": batch,
            "image_iteration_s": round(sum(seconds) / (len(units) * args.iterations * batch), 4),
            "wall_s": round(wall, 1), "peak_rss_gb": peak_rss_gb(),
            "acceleration": recon["cache"].get("acceleration", "NCHW, eager (before)"),
            **({"phases_s": _phase_split(phases, sum(seconds))} if phases is not None else {})}


def _time_phases(recon_engine) -> dict[str, float]:
    """Wrap the reconstruction engine's steps (names both code versions share) to add up their wall time.

    None of them nests in another as the engine calls them (a cut and a module are built before a pass
    runs), so the sums add up; the training loop is what is left of the units' time.
    """
    totals: dict[str, float] = {}
    raised: dict[str, float] = {}  # step -> the peak (GB) it left, for the steps that raised it
    totals["peak raised by"] = raised
    # the unit's steps moved from the engine to trainer.py (#31); older trees have them in the engine
    steps = _module("toolchain.quantize.reconstruct.trainer", "toolchain.recon.engine") \
        if hasattr(recon_engine, "UnitTrainer") else recon_engine
    trainer = getattr(steps, "UnitTrainer", None) or steps._Trainer
    output_of = {}

    def timed(name: str, function):
        def wrapper(*a, **k):
            start, peak = time.perf_counter(), peak_rss_gb()
            try:
                return function(*a, **k)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - start
                if peak_rss_gb() > peak:  # this step raised the process's peak memory
                    raised[name] = peak_rss_gb()
        return wrapper

    steps.correct_inputs = timed("distribution correction (50 steps per batch)", steps.correct_inputs)
    steps.extract = timed("graph cuts (extract)", steps.extract)
    trainer.qdq_model = timed("QDQ graph rebuild (materialize)", trainer.qdq_model)
    trainer._pass = timed("full passes (prefix, FP targets, next inputs)", trainer._pass)
    module_builder = trainer._module

    def module(self, model, trainable=False):
        start = time.perf_counter()
        built = module_builder(self, model, trainable)
        totals["module builds"] = totals.get("module builds", 0.0) + time.perf_counter() - start
        output_of[id(built)] = built
        inputs = [i.name for i in model.graph.input]
        if [o.name for o in model.graph.output] == [self.output] and inputs != [self.image_input] and not trainable:
            built.forward = timed("training loop: PD tail forward (+ its backward, not timed)", built.forward)
        return built

    trainer._module = module
    hook_name = "training loop: QDrop hooks forward (masks + select)"
    if hasattr(trainer, "_qdrop_hook"):  # before the QDrop masks moved to recon.qdrop
        method = trainer._qdrop_hook
        trainer._qdrop_hook = lambda self: timed(hook_name, method(self))
    else:
        factory = steps.qdrop_hook
        steps.qdrop_hook = lambda *a, **k: timed(hook_name, factory(*a, **k))
    return totals


def _phase_split(totals: dict[str, float], unit_seconds: float) -> dict[str, float]:
    raised = totals.pop("peak raised by")
    outside = sum(v for k, v in totals.items() if not k.startswith("training loop"))
    split = {k: round(v, 2) for k, v in sorted(totals.items())}
    split["peak raised by (GB after the step)"] = raised
    split["training loop (all of it: rest of the units' time)"] = round(unit_seconds - outside, 2)
    return split


def profile_mode(args: argparse.Namespace) -> dict:
    from torch.profiler import ProfilerActivity, profile

    preset = _module("toolchain.generate.config", "toolchain.datagen.config").preset
    Engine = _module("toolchain.generate.engine", "toolchain.datagen.engine").Engine
    Teacher = _module("toolchain.generate.teacher", "toolchain.datagen.teacher").Teacher
    read_preprocessing = _module("toolchain.onnxio.preprocessing", "toolchain.preprocessing").read_preprocessing

    model = onnx.load(args.model)
    pre = read_preprocessing(model)
    if args.accelerated:  # the new code's "auto" at 224 on the CPU
        Acceleration = _module("toolchain.core.acceleration", "toolchain.executor.acceleration").Acceleration

        teacher = Teacher.from_onnx(model, Acceleration.resolve("auto", "auto", pre.input_size, torch.device("cpu")))
    else:
        teacher = Teacher.from_onnx(model)
    engine = Engine(teacher, pre, preset("cpu", "dgh"), n=32, seed=0)
    engine.initialise()
    for _ in range(3):  # warm-up: first touch of memory, oneDNN primitive creation, the compile
        engine.step(0)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            engine.step(0)
    wall = time.perf_counter() - start
    ops = []
    for event in prof.key_averages(group_by_input_shape=True):
        if event.self_cpu_time_total > 0:
            ops.append({"name": event.key, "shapes": [list(s) for s in event.input_shapes[:3]] if event.input_shapes else [],
                        "self_s": event.self_cpu_time_total / 1e6 / args.steps, "calls": event.count // args.steps})
    return {"mode": "profile", "steps": args.steps, "batch": 32, "step_s": round(wall / args.steps, 3), "ops": ops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("generate", "reconstruct", "profile"))
    parser.add_argument("--model", required=True)
    parser.add_argument("--calib")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--units", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("--accelerated", action="store_true", help="profile: with the new code's auto acceleration")
    parser.add_argument("--quantize-option", action="append", default=[],
                        help="reconstruct: one more `toolchain quantize` argument (repeat), e.g. --quantize-option=--compile=off")
    parser.add_argument("--phases", action="store_true", help="reconstruct: add up the wall time of each step of a unit")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {"generate": generate_mode, "reconstruct": reconstruct_mode, "profile": profile_mode}[args.mode](args)
    print(json.dumps(result), file=sys.stdout, flush=True)


if __name__ == "__main__":
    main()
