"""The run config: every stage option is a key, files and overrides are read strictly, errors name the key."""

from __future__ import annotations

import dataclasses

import click
import pytest

from toolchain.cli.quantize import quantize_command
from toolchain.errors import ConfigError
from toolchain.pipeline import QuantizeSpec, RunConfig
from toolchain.pipeline.config import GenerateSpec
from toolchain.pipeline.config_io import apply_overrides, config_from_mapping, config_hash, config_to_mapping, read_config_file, resolved_yaml


def _option_keys(command: click.Command) -> set[str]:
    return {p.name for p in command.params if isinstance(p, click.Option)}


def test_every_quantize_option_is_a_quantize_key():
    """Rule: each option of `toolchain quantize` that shapes the model is a key of a quantize entry (with the
    option's name), so a quantize command line translates one to one into a config entry."""
    not_model_options = {"calib", "output", "resume", "overwrite", "as_json", "quiet", "log_level", "device", "threads", "cache_budget",
                         "spill_dir", "providers", "channels_last", "compile", "reuse_memory", "mean", "std", "input_size", "channel_order",
                         "pixel_scale",
                         "crop_fraction", "class_names"}  # run-level keys: calibration, run_dir, execution, preprocessing
    keys = {f.name for f in dataclasses.fields(QuantizeSpec)}
    assert _option_keys(quantize_command) - not_model_options <= keys


def test_resolved_config_reads_back_to_the_same_config(tmp_path):
    """Rule: config.resolved.yaml holds every key and reads back to an equal config with an equal hash."""
    config = RunConfig(quantize=(QuantizeSpec(name="a", w_bits=4, a_bits=4, reconstruct="brecq", reduce_range=False),))
    path = tmp_path / "c.yaml"
    path.write_text(resolved_yaml(config))
    again = config_from_mapping(read_config_file(path))
    assert again == config and config_hash(again) == config_hash(config)
    assert set(config_to_mapping(config)) == {f.name for f in dataclasses.fields(RunConfig)}


def test_hash_ignores_where_the_run_goes():
    """Rule: the config hash covers what decides the outputs, not run_dir or overwrite."""
    assert config_hash(RunConfig(run_dir="a")) == config_hash(RunConfig(run_dir="b", overwrite=True))
    assert config_hash(RunConfig()) != config_hash(RunConfig(generate=dataclasses.replace(RunConfig().generate, n=64)))


@pytest.mark.parametrize("raw, needles", [
    ({"quantise": []}, ["unknown key 'quantise'", "did you mean 'quantize'"]),
    ({"generate": {"n": "many"}}, ["generate.n", "expected an integer"]),
    ({"generate": {"n": 0}}, ["generate.n must be >= 1"]),
    ({"quantize": [{"w_bits": 5}]}, ["quantize[0] (W5A8)", "--w-bits 5"]),
    ({"quantize": [{"name": "a b"}]}, ["quantize[0].name 'a b'"]),
    ({"quantize": [{"name": "x"}, {"name": "x"}]}, ["the name 'x' is used twice"]),
    ({"quantize": []}, ["quantize is empty"]),
    ({"quantize": [{"reconstruct": "adaround"}]}, ["reconstruction 'adaround'"]),
    ({"gates": {"max_drop": 2}}, ["gates.max_drop is 2.0", "0.01 = 1 point"]),
    ({"model": "x.onnx", "gates": {"min_top1": 0.5}}, ["needs labelled images", "evaluate.data"]),
    ({"evaluate": {"runtime": "tflite"}}, ["evaluate.runtime is 'tflite'"]),
    ({"execution": {"device": "tpu"}}, ["execution: unknown device 'tpu'"]),
    ({"execution": {"compile": "always"}}, ["execution: compile must be auto, on or off"]),
    ({"quantize": [{"reduce_range": "sometimes"}]}, ["reduce_range is 'sometimes'"]),
])
def test_bad_config_values_name_the_key(raw, needles):
    """Rule: each bad value raises one ConfigError that names the key and what to give instead."""
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(raw, "c.yaml")
    for needle in needles:
        assert needle in str(caught.value), str(caught.value)


def test_overrides_set_nested_keys_list_entries_and_all_entries():
    """Rule: KEY.PATH=VALUE sets nested keys, list entries by index and all entries with *; VALUE is YAML."""
    raw = {"quantize": [{"name": "a"}, {"name": "b"}]}
    out = apply_overrides(raw, ["generate.n=64", "quantize.1.w_bits=4", "quantize.*.preset=fast", "gates.max_drop=0.02"])
    assert out["generate"]["n"] == 64 and out["gates"]["max_drop"] == 0.02
    assert out["quantize"] == [{"name": "a", "preset": "fast"}, {"name": "b", "w_bits": 4, "preset": "fast"}]
    assert raw == {"quantize": [{"name": "a"}, {"name": "b"}]}  # the input is not changed


def test_overriding_the_default_quantize_list_edits_its_entries():
    """Rule: without a config file, quantize.N.KEY edits the default W8A8 / W4A4-pdquant entries."""
    config = config_from_mapping(apply_overrides({}, ["quantize.*.preset=fast"]))
    assert [s.label for s in config.quantize] == ["W8A8", "W4A4-pdquant"]
    assert {s.preset for s in config.quantize} == {"fast"} and config.quantize[1].reconstruct == "pdquant"


@pytest.mark.parametrize("item, needle", [("generate.n", "expected KEY=VALUE"), ("quantize.5.w_bits=4", "not an entry"),
                                          ("model.x=1", "below a value")])
def test_bad_overrides_say_how_to_write_them(item, needle):
    with pytest.raises(ConfigError, match=needle):
        apply_overrides({"model": "m"}, [item])


@pytest.mark.parametrize("text, suffix, needle", [("model: [unclosed", ".yaml", "invalid YAML at line 1"),
                                                  ("{\"model\": }", ".json", "invalid JSON at line 1"),
                                                  ("- a\n- b\n", ".yaml", "top level must be a mapping")])
def test_unreadable_config_files_name_the_file_and_line(tmp_path, text, suffix, needle):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle) as caught:
        read_config_file(path)
    assert str(path) in str(caught.value)


def test_the_readme_config_example_is_a_valid_config():
    """Rule: the pipeline.yaml docs/pipeline.md shows reads as a valid RunConfig (its keys and values as documented)."""
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).parents[2] / "docs" / "pipeline.md").read_text()
    block = re.search(r"```yaml\n(# pipeline\.yaml.*?)```", readme, re.S)
    assert block is not None, "docs/pipeline.md lost its pipeline.yaml example"
    config = config_from_mapping(yaml.safe_load(block.group(1)), "docs/pipeline.md pipeline.yaml")
    assert [s.label for s in config.quantize] == ["w8a8", "w4a4", "qnn-w8a16"]
    assert config.quantize[1].gates.max_drop == 0.015 and config.gates.max_drop == 0.005


def test_imagenet_size_models_get_the_cpu_budgets_unless_given(tmp_path):
    """Rule: budgets left open resolve by the model's input size: an ImageNet-size model (zoo name or .onnx with a
    224x224 input) gets 64 images and the cpu presets for generation and every entry, and untouched entries
    become W8A8 + W4.5A8-mixed (4-bit weights at a 4.5-bit average, 8 or 4 bits per layer); a 32x32 model
    keeps 128 images, the default presets and W8A8 + W4A4-pdquant; values given in the config are never replaced."""
    from toolchain import api
    from toolchain.pipeline.runner import resolve

    large = resolve(RunConfig(model="mobilenetv2"), "x")
    assert (large.generate.n, large.generate.preset) == (64, "cpu")
    assert [spec.preset for spec in large.quantize] == ["cpu", "cpu"]
    assert [spec.label for spec in large.quantize] == ["W8A8", "W4.5A8-mixed"]
    mixed = large.quantize[1]
    assert (mixed.w_bits, mixed.a_bits, mixed.weight_bits_budget, mixed.w_bits_choices, mixed.reconstruct) == \
        (4, 8, 4.5, (4, 8), "none")
    small = resolve(RunConfig(model="resnet20_cifar10"), "x")
    assert (small.generate.n, small.generate.preset) == (128, "default")
    assert [spec.preset for spec in small.quantize] == ["default", "default"]
    assert [spec.label for spec in small.quantize] == ["W8A8", "W4A4-pdquant"]
    path = api.export_model("mobilenetv2", tmp_path / "m.onnx").path
    given = RunConfig(model=str(path), generate=GenerateSpec(n=32), quantize=(QuantizeSpec(preset="fast"),))
    resolved = resolve(given, "x")
    assert (resolved.generate.n, resolved.generate.preset, resolved.quantize[0].preset) == (32, "cpu", "fast")
