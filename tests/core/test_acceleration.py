"""Acceleration of the torch stages: when "auto" turns channels-last / torch.compile on, that they compute the same
values as the plain path (within float32 rounding), and that a failed compile falls back to eager with a warning."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from toolchain.cli.commands import cli
from toolchain.core import acceleration as acceleration_module
from toolchain.core.acceleration import Acceleration, to_channels_last
from toolchain.core.execution import Execution
from toolchain.errors import ConfigError
from toolchain.executor import OnnxModule
from toolchain.export.exporter import export_to_onnx
from toolchain.generate.config import preset
from toolchain.generate.generate import generate
from toolchain.generate.teacher import Teacher
from toolchain_models.digits import digits_resnet, preprocessing, weights_path

CPU = torch.device("cpu")
# Channels-last convolutions and inductor's fused kernels sum the same float32 products in another order:
# relative differences of ~1e-6 per op, a few 1e-5 after a dozen optimiser steps on the images.
LAYOUT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def digits():
    module = digits_resnet()
    state = np.load(weights_path())
    module.load_state_dict({k: torch.from_numpy(state[k]) for k in state.files})
    pre = preprocessing()
    return export_to_onnx(module.eval(), torch.zeros(1, 1, 8, 8), pre), pre


def test_auto_is_on_for_imagenet_size_cpu_inputs_only():
    """Rule: auto = on at >= 96 px on the CPU (where it is measured), off for small inputs and other devices."""
    assert Acceleration.resolve("auto", "off", (224, 224), CPU, "off") == Acceleration(channels_last=True, compile=False)
    assert Acceleration.resolve("auto", "auto", (32, 32), CPU) == Acceleration(False, False)
    assert Acceleration.resolve("auto", "auto", (224, 224), torch.device("cuda")) == Acceleration(False, False)
    assert Acceleration.resolve("on", "off", (8, 8), CPU).channels_last
    with pytest.raises(ConfigError, match="channels_last must be one of auto, on, off"):
        Acceleration.resolve("yes", "auto", (8, 8), CPU)
    with pytest.raises(ConfigError, match="compile must be auto, on or off"):
        Execution(compile="fast")


def test_auto_compile_needs_a_cxx_compiler(monkeypatch):
    """Rule: without a C++ compiler on PATH, auto stays eager instead of failing at the first step."""
    monkeypatch.setattr(acceleration_module.shutil, "which", lambda name: None)
    assert not Acceleration.resolve("auto", "auto", (224, 224), CPU).compile


def test_channels_last_module_computes_the_same_values(digits):
    """Rule: NHWC weights and inputs change the summation order only (LAYOUT_TOLERANCE), and outputs and input
    gradients come back in the same logical shape."""
    model, _ = digits
    x = torch.randn(4, 1, 8, 8)
    plain, fast = OnnxModule(model), to_channels_last(OnnxModule(model))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(xa), fast(xb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert yb.shape == ya.shape and torch.allclose(ya, yb, rtol=LAYOUT_TOLERANCE, atol=LAYOUT_TOLERANCE)
    assert torch.allclose(xa.grad, xb.grad, rtol=LAYOUT_TOLERANCE, atol=LAYOUT_TOLERANCE)


def _run(model, pre, acceleration: Acceleration, iterations: int = 4) -> np.ndarray:
    config = replace(preset("fast", "dgh"), iterations=iterations)
    return generate(model, pre, "dgh", 16, config, seed=0, progress=False, acceleration=acceleration).inputs


def test_generation_without_acceleration_is_the_default_at_small_sizes(digits):
    """Rule: at 8x8 "auto" resolves to the plain path, so small-model results stay byte-identical."""
    model, pre = digits
    config = replace(preset("fast", "dgh"), iterations=2)
    auto = generate(model, pre, "dgh", 16, config, seed=0, progress=False)
    assert auto.manifest["acceleration"] == "NCHW, eager"
    assert np.array_equal(auto.inputs, _run(model, pre, Acceleration(), iterations=2))


def test_channels_last_generation_matches_the_plain_one(digits):
    """Rule: the optimised images with NHWC canvases and teacher agree with NCHW ones within LAYOUT_TOLERANCE."""
    model, pre = digits
    plain = _run(model, pre, Acceleration())
    fast = _run(model, pre, Acceleration(channels_last=True))
    np.testing.assert_allclose(fast, plain, rtol=LAYOUT_TOLERANCE, atol=LAYOUT_TOLERANCE)


def test_compiled_generation_matches_eager(digits):
    """Rule: the torch.compile'd teacher (a real inductor compile of the digits net) optimises the same images
    as eager within LAYOUT_TOLERANCE."""
    model, pre = digits
    eager = _run(model, pre, Acceleration(channels_last=True), iterations=3)
    compiled = _run(model, pre, Acceleration(channels_last=True, compile=True), iterations=3)
    np.testing.assert_allclose(compiled, eager, rtol=LAYOUT_TOLERANCE, atol=LAYOUT_TOLERANCE)


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        raise RuntimeError("simulated inductor failure while compiling the backward")


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_failed_compile_falls_back_to_eager_with_the_same_images(digits, monkeypatch, capsys, where):
    """Rule: a compile failure (at the first forward, or at the first backward) warns once on stderr and the run
    continues eagerly from the same random draws: the images equal a run that never tried to compile."""
    model, pre = digits

    def fake_compile(fn, dynamic=False):
        def compiled(*args, **kwargs):
            if where == "forward":
                raise RuntimeError("simulated inductor failure: no C++ compiler")
            logits, *rest = fn(*args, **kwargs)
            return (_FailingBackward.apply(logits), *rest)
        return compiled

    monkeypatch.setattr(acceleration_module.torch, "compile", fake_compile)
    fell_back = _run(model, pre, Acceleration(compile=True))
    assert "torch.compile could not compile the teacher's forward pass" in capsys.readouterr().err
    monkeypatch.undo()
    assert np.array_equal(fell_back, _run(model, pre, Acceleration()))


def test_an_error_after_a_confirmed_compiled_step_propagates():
    """Rule: once a compiled step has run, a failure is the computation's own and is raised, not hidden."""
    forward = acceleration_module.CompiledForward(lambda x: x, enabled=False, what="f")
    forward.confirm()
    with pytest.raises(ValueError, match="genuine"):
        forward.fall_back(ValueError("genuine"))


def test_generate_cli_takes_the_switches_and_refuses_bad_values(tmp_path, digits):
    """Rule: --channels-last/--compile are on `generate` and `quantize` (click choices: exit 2 on a bad value,
    no output file)."""
    runner = CliRunner()
    assert "--compile [auto|on|off]" in runner.invoke(cli, ["generate", "--help"]).output
    quantize_help = runner.invoke(cli, ["quantize", "--help"]).output
    assert "--channels-last" in quantize_help and "--compile" in quantize_help
    model, _ = digits
    path = tmp_path / "digits.onnx"
    onnx.save(model, str(path))
    result = runner.invoke(cli, ["generate", str(path), "--compile", "maybe", "-o", str(tmp_path / "c.npz")])
    assert result.exit_code == 2 and "maybe" in result.output
    assert not (tmp_path / "c.npz").exists()


def test_teacher_with_acceleration_reports_the_same_moments(digits):
    """Rule: the teacher's flat BN moments are layout-independent (LAYOUT_TOLERANCE)."""
    model, _ = digits
    x = torch.randn(8, 1, 8, 8)
    a = Teacher.from_onnx(model).run(x)
    b = Teacher.from_onnx(model, Acceleration(channels_last=True)).run(x)
    assert torch.allclose(a.m1, b.m1, rtol=LAYOUT_TOLERANCE, atol=LAYOUT_TOLERANCE)
    assert torch.allclose(a.m2, b.m2, rtol=LAYOUT_TOLERANCE, atol=LAYOUT_TOLERANCE)


def test_memory_reuse_resolves_like_the_other_switches_and_restores_glibc_s_settings(monkeypatch):
    """Rule: reuse_memory "auto" is on only for ImageNet-size inputs on the CPU (and only where glibc is), "off" is
    off everywhere; the context manager sets mmap off and a high trim threshold, and puts glibc's values back and
    trims on exit, also when the block raises."""
    from toolchain.core import memory

    assert Acceleration.resolve("auto", "off", (32, 32), CPU).reuse_memory is False
    assert Acceleration.resolve("auto", "off", (224, 224), CPU, "off").reuse_memory is False
    assert Acceleration.resolve("auto", "off", (224, 224), CPU).reuse_memory is memory.reuse_available()
    with pytest.raises(ConfigError, match="reuse_memory must be one of auto, on, off"):
        Acceleration.resolve("auto", "auto", (224, 224), CPU, "always")

    calls = []

    class FakeLibc:
        def mallopt(self, parameter, value):
            calls.append(("mallopt", parameter, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return 1

    monkeypatch.setattr(memory, "_glibc", lambda: FakeLibc())
    with pytest.raises(RuntimeError), memory.reuse_freed_memory(True):
        assert calls == [("mallopt", memory.M_MMAP_MAX, 0), ("mallopt", memory.M_TRIM_THRESHOLD, memory.KEEP_AT_TOP)]
        raise RuntimeError("the loop failed")
    assert calls[2:] == [("mallopt", memory.M_MMAP_MAX, memory.GLIBC_MMAP_MAX),
                         ("mallopt", memory.M_TRIM_THRESHOLD, memory.GLIBC_TRIM_THRESHOLD), ("trim", 0)]
    calls.clear()
    with memory.reuse_freed_memory(False):
        pass
    assert calls == []


def test_release_trims_only_when_reuse_is_on(monkeypatch):
    """Rule: release_freed_memory hands the heap back (malloc_trim) between reconstruction's phases when reuse is on,
    and does nothing when it is off (the path that keeps glibc's own behaviour)."""
    from toolchain.core import memory

    trims = []

    class FakeLibc:
        def malloc_trim(self, pad):
            trims.append(pad)
            return 1

    monkeypatch.setattr(memory, "_glibc", lambda: FakeLibc())
    memory.release_freed_memory(False)
    assert trims == []
    memory.release_freed_memory(True)
    assert trims == [0]
