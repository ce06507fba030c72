"""Data generation: shapes and ranges per method, BN-loss reduction, DGH joint statistics and memory, FDDA centres, errors, resume."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from toolchain.data.images import open_images
from toolchain.errors import ConfigError, DataError, GraphError
from toolchain.executor import OnnxModule
from toolchain.export.exporter import export_to_onnx
from toolchain.generate import engine as engine_module
from toolchain.generate.augment import ImagePipeline, valid_range
from toolchain.generate.config import GenerationConfig, preset
from toolchain.generate.engine import Engine
from toolchain.generate.fdda import class_centres
from toolchain.generate.generate import generate
from toolchain.generate.losses import combine_moments, image_moments
from toolchain.generate.teacher import Teacher
from toolchain.onnxio.preprocessing import CIFAR10_CLASSES, Preprocessing
from toolchain_models.digits import digits_resnet, heldout_path, preprocessing, weights_path
from toolchain_models.resnet_cifar import resnet20

MOMENT_TOLERANCE = 1e-5  # float32 sums over the same values in a different grouping


@pytest.fixture(scope="module")
def digits() -> tuple[onnx.ModelProto, Preprocessing]:
    """The trained digits ResNet (6 BN nodes, 1x8x8 input) exported with BN kept."""
    module = digits_resnet()
    state = np.load(weights_path())
    module.load_state_dict({k: torch.from_numpy(state[k]) for k in state.files})
    pre = preprocessing()
    return export_to_onnx(module.eval(), torch.zeros(1, 1, 8, 8), pre), pre


def fast(method: str, **changes) -> GenerationConfig:
    return replace(preset("fast", method), **changes)


def _in_range(inputs: np.ndarray, pre: Preprocessing) -> bool:
    low, high = (t.numpy() for t in valid_range(pre))
    return bool(np.all(inputs >= low - 1e-6) and np.all(inputs <= high + 1e-6))


@pytest.mark.parametrize("method", ["dgh", "bns", "fdda", "gaussian", "real"])
def test_every_method_returns_valid_inputs(digits, method):
    """Each method returns float32 (n, C, H, W) inside the valid pixel range; fdda and real carry labels."""
    model, pre = digits
    calib = generate(model, pre, method, 32, fast(method), seed=0, real_data=heldout_path(), progress=False)
    assert calib.inputs.shape == (32, 1, 8, 8) and calib.inputs.dtype == np.float32
    assert np.isfinite(calib.inputs).all() and _in_range(calib.inputs, pre)
    assert (calib.labels is not None) == (method in ("fdda", "real"))


def test_cifar_resnet20_three_channels_in_per_channel_range():
    """A random 3-channel ResNet-20 works from its ONNX file alone; each channel stays in its own valid range."""
    torch.manual_seed(0)
    pre = Preprocessing(mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261), input_size=(32, 32),
                        class_names=CIFAR10_CLASSES)
    model = export_to_onnx(resnet20().eval(), torch.zeros(1, 3, 32, 32), pre)
    calib = generate(model, pre, "dgh", 16, fast("dgh", iterations=2), seed=0, progress=False)
    assert calib.inputs.shape == (16, 3, 32, 32) and _in_range(calib.inputs, pre)
    assert calib.manifest["border"] == 4 and calib.manifest["num_bn_layers"] == 19


@pytest.mark.parametrize("method", ["dgh", "bns"])
def test_optimisation_halves_the_bn_loss(digits, method):
    """A few dozen iterations of dgh / bns bring the BN loss below half of the initial images' loss."""
    model, pre = digits
    calib = generate(model, pre, method, 64, fast(method, iterations=30), seed=0, progress=False)
    losses = calib.manifest["losses"]
    assert losses["final"]["bn"] < 0.5 * losses["initial"]["bn"]
    assert losses["final"]["bn_distance"] < losses["initial"]["bn_distance"]


def _engine(digits, **changes) -> tuple[Engine, Teacher]:
    model, pre = digits
    teacher = Teacher.from_onnx(model)
    engine = Engine(teacher, pre, fast("dgh", **changes), n=40, seed=0)
    engine.initialise()
    return engine, teacher


def test_dgh_joint_statistics_equal_whole_set_statistics(digits):
    """Combining the stored per-batch moments gives the moments of all images in one pass (tolerance 1e-5)."""
    engine, teacher = _engine(digits)
    assert engine.sizes == [14, 13, 13]  # uneven batches are count-weighted
    final = engine.final_images()
    with torch.no_grad():
        out = teacher.run(final)
    whole = torch.cat([torch.stack([out.m1, out.m2]), image_moments(final)], dim=1)
    for j in range(len(engine.sizes)):
        combined = combine_moments(engine.stored, engine.counts, j, engine.stored[j])
        torch.testing.assert_close(combined, whole, rtol=MOMENT_TOLERANCE, atol=MOMENT_TOLERANCE)


def test_dgh_stored_statistics_are_batches_by_channels_by_two(digits):
    """DGH keeps J x sum(C_l) x 2 floats of statistics (BN layers plus the input pseudo-layer), nothing per image."""
    engine, teacher = _engine(digits)
    channels = sum(teacher.layout.channels) + 1  # + the 1-channel input pseudo-layer
    assert engine.stored.shape == (len(engine.sizes), 2, channels)
    engine.run(progress=False)
    assert engine.stored.shape == (len(engine.sizes), 2, channels)


def test_fdda_labels_cover_classes_and_centres_come_from_the_chosen_images(digits):
    """FDDA labels are round-robin over all classes; each centre averages its class's chosen images' statistics."""
    model, pre = digits
    teacher = Teacher.from_onnx(model)
    real = open_images(heldout_path(), pre)
    start = 2
    centres = class_centres(teacher, real, per_class=2, num_classes=10, start=start, seed=0)
    chosen_labels = real.labels[centres.indices]
    assert sorted(chosen_labels.tolist()) == sorted(list(range(10)) * 2)
    # Independent reference: per-image statistics of each chosen image through the plain BN-input hook.
    module, seen = OnnxModule(model), []
    with torch.no_grad(), module.bn_input_hook(lambda name, a: seen.append(a)):
        module(torch.from_numpy(pre.apply(real.images[centres.indices])))
    deep = seen[start:]
    per_image_mean = torch.cat([a.mean((2, 3)) for a in deep], dim=1)
    per_image_var = torch.cat([a.var((2, 3), unbiased=False) for a in deep], dim=1)
    for c in range(10):
        rows = torch.from_numpy(np.flatnonzero(chosen_labels == c))
        torch.testing.assert_close(centres.mean[c], per_image_mean[rows].mean(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(centres.var[c], per_image_var[rows].mean(0), rtol=1e-5, atol=1e-5)
    calib = generate(model, pre, "fdda", 32, fast("fdda"), seed=0, real_data=heldout_path(), progress=False)
    assert np.bincount(calib.labels, minlength=10).tolist() == [4, 4] + [3] * 8


def test_manifest_has_the_required_keys(digits):
    """The manifest names method, preset, hyperparameters, seed, model sha256, loss terms, wall time, version."""
    model, pre = digits
    calib = generate(model, pre, "dgh", 16, fast("dgh", iterations=2), seed=3, progress=False)
    manifest = calib.manifest
    for key in ("method", "preset", "config", "seed", "n", "model_sha256", "losses", "wall_time_s",
                "toolchain_version", "iterations", "image_iterations_per_s"):
        assert key in manifest, key
    assert manifest["method"] == "dgh" and manifest["preset"] == "fast" and manifest["seed"] == 3
    assert manifest["model_sha256"] == hashlib.sha256(model.SerializeToString()).hexdigest()
    assert manifest["config"] == fast("dgh", iterations=2).to_dict()
    assert GenerationConfig.from_dict(manifest["config"]) == fast("dgh", iterations=2)
    assert {"bn", "output", "total", "bn_distance"} <= set(manifest["losses"]["final"])


def _no_bn_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["logits"], name="flatten")]
    graph = helper.make_graph(nodes, "nobn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_model_without_batchnorm_is_refused_with_the_remedy(digits):
    """A graph whose BN was folded at export cannot drive dgh: GraphError suggesting `toolchain export` or real data."""
    with pytest.raises(GraphError, match=r"no BatchNormalization.*toolchain export.*--method real"):
        generate(_no_bn_model(), digits[1], "dgh", 16, fast("dgh"), progress=False)


@pytest.mark.parametrize("n, pattern", [(8, "n must be >= batch size.*reduce --batch-size"), (0, "at least 1")])
def test_too_few_images_are_refused(digits, n, pattern):
    """n smaller than the batch size, or zero, is a ConfigError saying what to change."""
    with pytest.raises(ConfigError, match=pattern):
        generate(*digits, "dgh", n, fast("dgh"), progress=False)


def test_fdda_without_real_data_is_refused(digits):
    """fdda needs labelled images: DataError pointing to --data."""
    with pytest.raises(DataError, match="--data"):
        generate(*digits, "fdda", 16, fast("fdda"), progress=False)


def test_fdda_with_a_missing_class_names_it(digits, tmp_path):
    """Real data lacking a class: DataError naming the missing class."""
    with np.load(heldout_path()) as data:
        keep = data["labels"] != 3
        path = tmp_path / "no3.npz"
        np.savez(path, images=data["images"][keep], labels=data["labels"][keep], class_names=data["class_names"])
    with pytest.raises(DataError, match=r"no images of class 3.*--fdda-classes present"):
        generate(*digits, "fdda", 16, fast("fdda"), real_data=path, progress=False)


def test_fdda_on_the_present_classes_labels_and_centres_only_those(digits, tmp_path):
    """classes="present": a class without real images gets no synthetic image and a zero centre; the classes
    drawn before it get the all-classes run's centres (same seeded choice; tolerance 1e-6)."""
    model, pre = digits
    with np.load(heldout_path()) as data:
        keep = data["labels"] != 3
        path = tmp_path / "no3.npz"
        np.savez(path, images=data["images"][keep], labels=data["labels"][keep], class_names=data["class_names"])
    teacher, real = Teacher.from_onnx(model), open_images(path, pre)
    centres = class_centres(teacher, real, per_class=1, num_classes=10, start=2, seed=0, present_only=True)
    assert centres.classes.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert float(centres.mean[3].abs().sum()) == 0.0 and float(centres.var[3].abs().sum()) == 0.0
    every = class_centres(teacher, open_images(heldout_path(), pre), per_class=1, num_classes=10, start=2, seed=0)
    assert every.classes.tolist() == list(range(10))
    torch.testing.assert_close(centres.mean[:3], every.mean[:3], rtol=1e-6, atol=1e-6)
    assert torch.isfinite(centres.mean).all() and torch.isfinite(centres.var).all()
    config = replace(fast("fdda"), fdda=replace(fast("fdda").fdda, classes="present"))
    calib = generate(model, pre, "fdda", 18, config, seed=0, real_data=path, progress=False)
    assert np.bincount(calib.labels, minlength=10).tolist() == [2, 2, 2, 0, 2, 2, 2, 2, 2, 2]
    with pytest.raises(ConfigError, match=r"fdda.classes"):
        replace(fast("fdda"), fdda=replace(fast("fdda").fdda, classes="some"))


def test_resume_continues_bit_for_bit(digits, tmp_path, monkeypatch):
    """An interrupted run resumed from its checkpoint ends with exactly the uninterrupted run's images."""
    model, pre = digits
    config = fast("dgh", iterations=6, checkpoint_every=2)
    reference = generate(model, pre, "dgh", 32, config, seed=1, progress=False)

    real_save, saves = engine_module.save_checkpoint, []

    def save_then_crash(path, state):
        real_save(path, state)
        saves.append(state["iteration"])
        raise KeyboardInterrupt  # Ctrl-C right after the first checkpoint

    checkpoint = tmp_path / "run.ckpt"
    monkeypatch.setattr(engine_module, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        generate(model, pre, "dgh", 32, config, seed=1, progress=False, checkpoint=checkpoint)
    monkeypatch.setattr(engine_module, "save_checkpoint", real_save)
    assert saves == [2] and not list(tmp_path.glob(".*.tmp"))

    resumed = generate(model, pre, "dgh", 32, config, seed=1, progress=False, checkpoint=checkpoint, resume=True)
    assert resumed.manifest["resumed_at_iteration"] == 2 and resumed.manifest["iterations"] == 6
    np.testing.assert_array_equal(resumed.inputs, reference.inputs)
    with pytest.raises(ConfigError, match=r"different.*seed"):
        generate(model, pre, "dgh", 32, config, seed=2, progress=False, checkpoint=checkpoint, resume=True)


def test_pipeline_finalise_is_centre_crop_of_smoothed_clipped_canvas(digits):
    """Finalisation = smoothing, centre crop of the (H+P)x(W+P) canvas, clip; augment keeps the output size."""
    pre = digits[1]
    pipe = ImagePipeline(fast("dgh").augment, pre)
    x = pipe.initial(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 9, 9) and pipe.finalise(x).shape == (4, 1, 8, 8)
    assert pipe.augment(x, torch.Generator().manual_seed(0)).shape == (4, 1, 8, 8)


def test_fused_moment_gradient_matches_autograd():
    """The fused BN-moment backward equals autograd's gradient of mean(a) and mean(a^2) (gradcheck, float64)."""
    from toolchain.generate.teacher import Moments

    a = torch.randn(3, 4, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(Moments.apply, (a,))
    b = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)  # BN after a Linear: (N, C)
    assert torch.autograd.gradcheck(Moments.apply, (b,))


def test_non_image_input_is_refused(digits):
    """A model whose input is not a float NCHW image is a GraphError naming the input."""
    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["features", "w"], ["y"], name="mm")], "vec",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(GraphError, match=r"'features'.*not an image tensor"):
        generate(model, digits[1], "dgh", 16, fast("dgh"), progress=False)


@pytest.mark.parametrize("changes", [
    {"joint_statistics": False}, {"refresh": "forward"}, {"input_layer": False}, {"second_moment": "var"},
    {"output_loss": "mct", "output_weight": 1e-3}, {"output_loss": "none"}, {"bn_weight": 0.0, "output_weight": 0.0},
])
def test_every_ablation_switch_runs(digits, changes):
    """Each DGH ingredient can be switched on its own and still yields valid images (one iteration)."""
    model, pre = digits
    calib = generate(model, pre, "dgh", 16, fast("dgh", iterations=1, **changes), seed=0, progress=False)
    assert _in_range(calib.inputs, pre) and calib.manifest["config"]["iterations"] == 1


def test_fdda_terms_on_a_dgh_preset(digits):
    """FDDA's class terms combine with DGH's joint statistics and augmentation (method fdda, dgh settings)."""
    model, pre = digits
    calib = generate(model, pre, "fdda", 32, fast("dgh", iterations=2), seed=0, real_data=heldout_path(), progress=False)
    final = calib.manifest["losses"]["final"]
    assert {"bn", "ce", "centralised", "distorted"} <= set(final) and calib.manifest["config"]["joint_statistics"]


def test_a_torch_teacher_reads_the_running_statistics_and_the_moments_of_each_bn_input():
    """Rule: Teacher.from_torch takes its targets from the BatchNorm layers' running statistics (registration order)
    and, run on x, reports each BN input's per-channel mean and second moment (float32 tolerance 1e-5)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2))
    model[1].running_mean.uniform_(-1, 1)
    model[4].running_var.uniform_(0.5, 2)
    model.eval()
    teacher = Teacher.from_torch(model)
    assert teacher.layout.names == ("1", "4") and teacher.layout.channels == (4, 2)
    torch.testing.assert_close(teacher.targets.mean, torch.cat([model[1].running_mean, model[4].running_mean]))
    x = torch.randn(5, 3, 8, 8)
    out = teacher.run(x)
    first_bn_input = model[0](x)
    torch.testing.assert_close(out.m1[:4], first_bn_input.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_a_torch_batchnorm_without_running_statistics_is_refused_by_name():
    """Rule: a BatchNorm that keeps no running statistics has nothing to match: a GraphError naming the layer."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(GraphError, match="BatchNorm '1' keeps no running statistics"):
        Teacher.from_torch(model)
