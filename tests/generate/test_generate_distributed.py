"""Distributed data generation (torchrun, gloo, 2 CPU processes) against one process: order, seeds, statistics, results.

The file is also the worker: `python -m torch.distributed.run --standalone --nproc-per-node 2 THIS MODEL OUT`
(or plain `python THIS MODEL OUT` for the single-process reference) runs the cases below and writes
per-rank .npz files under OUT.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

# name -> (method, n, config changes); batch size 16 (fast preset) -> n = 32: 2 batches, n = 48: 3 (uneven blocks)
CASES = {"dgh32": ("dgh", 32, {}), "dgh48": ("dgh", 48, {}), "bns32": ("bns", 32, {})}
STATISTICS_TOLERANCE = 1e-6  # step-0 whole-set moments: the same float32 terms summed in another grouping (measured 0)
# dgh K=2 vs K=1 (digits ResNet, fast preset = 6 iterations, lr 16, seed 0, n = 32; pixels span [-0.81, 1.85]):
# measured max |diff| 0.090 (mean 0.008), final BN loss 1.296 vs 1.313 (-1.3 %). The whole difference is
# staleness (test_dgh_two_processes_are_one_process_with_deferred_refreshes). Bounds with ~2x headroom:
FINAL_IMAGE_TOLERANCE = 0.2
FINAL_LOSS_RELATIVE = 0.05


def _worker(model_path: str, out: str) -> None:
    import onnx
    import torch

    from toolchain.core.distributed import distributed_from_env
    from toolchain.generate import engine as engine_module
    from toolchain.generate.config import preset
    from toolchain.generate.generate import generate
    from toolchain.onnxio.preprocessing import read_preprocessing

    torch.set_num_threads(1)
    model = onnx.load(model_path)
    pre = read_preprocessing(model)
    distributed = distributed_from_env()
    rank = distributed.rank if distributed is not None else 0
    label = "k2" if distributed is not None else "k1"
    captured: dict[str, object] = {}

    real_combine = engine_module.combine_moments

    def recording_combine(stored, counts, j, current, reduce=None):  # first whole-set moments of the run
        moments = real_combine(stored, counts, j, current, reduce)
        captured.setdefault("first", (j, moments.detach().clone()))
        return moments

    real_initialise = engine_module.Engine.initialise

    def recording_initialise(self):
        real_initialise(self)
        captured["initial"], captured["owned"] = self.final_images().clone(), list(self.owned)

    real_final = engine_module.Engine.final_images

    def recording_final(self):
        images = real_final(self)
        captured["final"] = images.clone()
        return images

    engine_module.combine_moments = recording_combine
    engine_module.Engine.initialise = recording_initialise
    engine_module.Engine.final_images = recording_final
    for name, (method, n, changes) in CASES.items():
        captured.clear()
        calib = generate(model, pre, method, n, replace(preset("fast", method), **changes), seed=0, progress=False,
                         distributed=distributed)
        first_j, first = captured.get("first", (-1, torch.zeros(0)))
        arrays = {"initial": captured["initial"].numpy(), "final": captured["final"].numpy(),
                  "owned": np.array(captured["owned"]), "first_j": np.array(first_j), "first": first.numpy()}
        if calib is not None:
            arrays.update(inputs=calib.inputs, manifest=np.array(json.dumps(calib.manifest)))
        assert (calib is None) == (rank != 0), "rank 0 alone returns the set"
        np.savez(Path(out) / f"{label}_{name}_rank{rank}.npz", **arrays)

    # Resume under distributed: interrupt after the first per-rank checkpoint, resume, compare.
    engine_module.combine_moments = real_combine
    engine_module.Engine.initialise = real_initialise
    engine_module.Engine.final_images = real_final
    config = replace(preset("fast", "dgh"), checkpoint_every=2)
    checkpoint = Path(out) / f"{label}.ckpt"
    real_save = engine_module.save_checkpoint

    def save_then_stop(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    engine_module.save_checkpoint = save_then_stop
    with contextlib.suppress(KeyboardInterrupt):
        generate(model, pre, "dgh", 32, config, seed=0, progress=False, checkpoint=checkpoint, distributed=distributed)
    engine_module.save_checkpoint = real_save
    resumed = generate(model, pre, "dgh", 32, config, seed=0, progress=False, checkpoint=checkpoint, resume=True,
                       distributed=distributed)
    if resumed is not None:
        files = sorted(p.name for p in Path(out).glob(f"{label}.ckpt*"))
        np.savez(Path(out) / f"{label}_resumed.npz", inputs=resumed.inputs,
                 at=np.array(resumed.manifest["resumed_at_iteration"]), files=np.array(files))


if __name__ == "__main__":
    from toolchain.core.distributed import distributed_session, exit_process

    with distributed_session() as session:  # the worker's own group is destroyed before exit, as the CLI does
        _worker(sys.argv[1], sys.argv[2])
    if session is not None:
        exit_process(0)
    sys.exit(0)


# ------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One 2-process torchrun (gloo) and one single-process run of every case; their per-rank files."""
    import onnx

    from toolchain.api import export_model

    folder = tmp_path_factory.mktemp("distributed")
    model = folder / "d.onnx"
    export_model("digits_resnet", model)
    onnx.load(str(model))  # a valid file before launching workers on it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("WORLD_SIZE", None)
    for out in ("k1", "k2"):
        (folder / out).mkdir()
    single = [sys.executable, __file__, str(model), str(folder / "k1")]
    multi = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
             __file__, str(model), str(folder / "k2")]
    for command in (single, multi):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder


def _load(runs: Path, label: str, name: str, rank: int) -> dict[str, np.ndarray]:
    with np.load(runs / label / f"{label}_{name}_rank{rank}.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("name", ["dgh32", "dgh48"])
def test_rank0_returns_all_images_in_global_batch_order(runs, name):
    """Rank 0's set = rank 0's block then rank 1's (contiguous batch blocks), n images; the manifest says 2 x gloo."""
    _, n, _ = CASES[name]
    rank0, rank1 = _load(runs, "k2", name, 0), _load(runs, "k2", name, 1)
    blocks = {32: ([0], [1]), 48: ([0, 1], [2])}[n]
    assert (rank0["owned"].tolist(), rank1["owned"].tolist()) == blocks
    assert rank0["inputs"].shape == (n, 1, 8, 8) and "inputs" not in rank1
    np.testing.assert_array_equal(rank0["inputs"], np.concatenate([rank0["final"], rank1["final"]]))
    manifest = json.loads(str(rank0["manifest"]))
    assert manifest["world_size"] == 2 and manifest["backend"] == "gloo" and manifest["n"] == n


@pytest.mark.parametrize("name", list(CASES))
def test_initial_images_do_not_depend_on_the_process_count(runs, name):
    """Batch j starts from the images of its (seed, j) generator: K=2's blocks concatenated = K=1's images, exactly."""
    single = _load(runs, "k1", name, 0)
    blocks = np.concatenate([_load(runs, "k2", name, r)["initial"] for r in (0, 1)])
    np.testing.assert_array_equal(blocks, single["initial"])


@pytest.mark.parametrize("name", ["dgh32", "dgh48"])
def test_step0_global_statistics_equal_single_process(runs, name):
    """The first step's whole-set moments (all-reduced stored sums + live batch) equal one process's (1e-6)."""
    single = _load(runs, "k1", name, 0)
    j = int(single["first_j"])
    owner = next(r for r in (0, 1) if j in _load(runs, "k2", name, r)["owned"])
    distributed = _load(runs, "k2", name, owner)
    assert int(distributed["first_j"]) == j  # the owner visits its batches in the global order
    np.testing.assert_allclose(distributed["first"], single["first"], rtol=STATISTICS_TOLERANCE,
                               atol=STATISTICS_TOLERANCE)
    initial = json.loads(str(_load(runs, "k2", name, 0)["manifest"]))["losses"]["initial"]
    reference = json.loads(str(single["manifest"]))["losses"]["initial"]
    assert initial == pytest.approx(reference, rel=STATISTICS_TOLERANCE)


def test_dgh_final_images_and_loss_close_to_single_process(runs):
    """Remote batches' moments are one step staler than in one process: final images within 0.2, BN loss within 5 %."""
    single = _load(runs, "k1", "dgh32", 0)
    rank0 = _load(runs, "k2", "dgh32", 0)
    diff = np.abs(rank0["inputs"] - single["inputs"])
    assert diff.max() <= FINAL_IMAGE_TOLERANCE, diff.max()
    final = json.loads(str(rank0["manifest"]))["losses"]["final"]
    reference = json.loads(str(single["manifest"]))["losses"]["final"]
    assert abs(final["bn"] - reference["bn"]) <= FINAL_LOSS_RELATIVE * reference["bn"], (final["bn"], reference["bn"])


def test_dgh_two_processes_are_one_process_with_deferred_refreshes(runs, monkeypatch):
    """K=2 on 2 batches = one process whose stored-moment refreshes wait for the end of each step position (exact)."""
    import onnx
    import torch

    from toolchain.generate.config import preset
    from toolchain.generate.engine import Engine
    from toolchain.generate.generate import generate
    from toolchain.onnxio.preprocessing import read_preprocessing

    pending: list = []
    refresh, step = Engine._refresh, Engine.step

    def deferred_step(self, j):
        value = step(self, j)
        if len(pending) == len(self.sizes):  # 2 batches on 2 ranks: one step position per outer iteration
            for batch, current in pending:
                refresh(self, batch, current)
            pending.clear()
        return value

    monkeypatch.setattr(Engine, "_refresh", lambda self, j, current: pending.append((j, current)))
    monkeypatch.setattr(Engine, "step", deferred_step)
    model = onnx.load(str(runs / "d.onnx"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers
    try:
        emulated = generate(model, read_preprocessing(model), "dgh", 32, preset("fast", "dgh"), seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(emulated.inputs, _load(runs, "k2", "dgh32", 0)["inputs"])


def test_per_batch_method_is_identical_to_single_process(runs):
    """bns couples no batches: K=2 yields one process's images exactly and its final losses (1e-6 relative)."""
    single, rank0 = _load(runs, "k1", "bns32", 0), _load(runs, "k2", "bns32", 0)
    np.testing.assert_array_equal(rank0["inputs"], single["inputs"])
    final = json.loads(str(rank0["manifest"]))["losses"]["final"]
    reference = json.loads(str(single["manifest"]))["losses"]["final"]
    assert final.keys() == reference.keys()
    for key in final:
        assert final[key] == pytest.approx(reference[key], rel=1e-6), key


def test_distributed_resume_uses_one_checkpoint_per_rank(runs):
    """An interrupted 2-process run resumes from its .rank0/.rank1 checkpoints to the uninterrupted run's images."""
    with np.load(runs / "k2" / "k2_resumed.npz") as data:
        resumed, at, files = data["inputs"], int(data["at"]), data["files"].tolist()
    assert at == 2 and files == ["k2.ckpt.rank0", "k2.ckpt.rank1"]
    np.testing.assert_array_equal(resumed, _load(runs, "k2", "dgh32", 0)["inputs"])


def test_not_launched_by_torchrun_means_one_process(monkeypatch):
    """WORLD_SIZE unset or 1: distributed_from_env() is None; blocks are contiguous and differ by at most one batch."""
    from toolchain.core.distributed import distributed_from_env, rank_path, shard_batches
    from toolchain.errors import ConfigError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed_from_env() is None
    assert [list(shard_batches(5, 3, r)) for r in range(3)] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ConfigError, match="every process needs at least one batch"):
        shard_batches(1, 2, 0)
    assert rank_path(Path("a.ckpt"), None) == Path("a.ckpt")


def test_torchrun_generate_exits_zero_after_writing(runs, tmp_path):
    """`torchrun --nproc-per-node 2 -m toolchain.cli generate ...` writes the set and every process exits 0: the process
    group is destroyed before exit (no 'terminate called without an active exception' abort)."""
    out = tmp_path / "dgh32.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "toolchain.cli",
               "generate", str(runs / "d.onnx"), "--method", "dgh", "-n", "32", "--preset", "fast", "-o", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "terminate called" not in done.stderr
    with np.load(out) as data:
        assert data["inputs"].shape == (32, 1, 8, 8)
    assert not list(tmp_path.glob("*.ckpt*")), "per-rank checkpoints are removed once the set is written"
