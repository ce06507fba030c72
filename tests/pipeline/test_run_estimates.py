"""Run-time estimates printed before long torch stages (generation, reconstruction): what they are built on.

Rules checked: a reconstruction unit's cost follows the multiply-adds it runs (its own layers, twice, and
with the PD term the float rest of the network), so on a network the first unit costs more than the last;
the remaining time extrapolates the measured time by those costs; durations read as a person says them;
and the announcement is made only when the rest is long enough to matter.
"""

from __future__ import annotations

import pytest

from toolchain.core.execution import describe_duration
from toolchain.generate.engine import _announce_estimate as announce_generation
from toolchain.quantize.annotate.placement import annotate
from toolchain.quantize.config import QuantConfig
from toolchain.quantize.fold.prepare import prepare_float_model
from toolchain.quantize.reconstruct.estimate import announce_remaining as announce_reconstruction
from toolchain.quantize.reconstruct.estimate import remaining_seconds, unit_costs
from toolchain.quantize.reconstruct.units import find_units
from toolchain.runtimes.coverage import layer_macs

from quant_fixtures import export_random


@pytest.fixture(scope="module")
def resnet20_units():
    config = QuantConfig(w_bits=4, a_bits=4)
    float_model, _ = prepare_float_model(export_random("toolchain_models.resnet_cifar:resnet20", 32), config)
    plan = annotate(float_model, config)
    return float_model, find_units(float_model, plan, float_model.graph.input[0].name).units


class _Bar:
    def __init__(self):
        self.lines = []

    def write(self, text, file=None):
        self.lines.append(text)


def test_unit_costs_follow_the_multiply_adds_each_iteration_runs(resnet20_units):
    float_model, units = resnet20_units
    macs = layer_macs(float_model)
    own = [sum(macs.get(node, 0) for node in unit.nodes) for unit in units]
    plain = unit_costs(float_model, units, prediction_difference=False)
    assert plain == [pytest.approx(max(2.0 * o, 1.0)) for o in own]  # exact arithmetic, no tolerance needed
    with_pd = unit_costs(float_model, units, prediction_difference=True)
    assert with_pd[0] > with_pd[-1]  # the first unit runs the whole rest of the network behind it
    assert all(p >= q for p, q in zip(with_pd, plain))
    assert with_pd[-1] == pytest.approx(plain[-1])  # nothing behind the last unit


def test_remaining_time_extrapolates_by_cost():
    assert remaining_seconds([2.0, 1.0, 1.0], done=1, seconds_done=10.0) == pytest.approx(10.0)
    assert remaining_seconds([1.0, 1.0, 1.0], done=3, seconds_done=30.0) == 0.0
    assert remaining_seconds([1.0, 3.0], done=0, seconds_done=0.0) == 0.0


@pytest.mark.parametrize("seconds, text", [(40, "40 s"), (720, "12 min"), (8280, "2.3 h")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert describe_duration(seconds) == text


def test_estimates_are_announced_only_when_the_rest_takes_over_a_minute():
    bar = _Bar()
    announce_generation(bar, "dgh 64 images", 6.0, 99)
    assert bar.lines == ["dgh 64 images: an iteration takes 6 s; the remaining 99 should take about 10 min"]
    quiet = _Bar()
    announce_generation(quiet, "dgh 64 images", 0.5, 99)
    announce_reconstruction(quiet, "pdquant", [1.0, 1.0, 1.0], 0, 20.0)
    assert quiet.lines == []
    long = _Bar()
    announce_reconstruction(long, "pdquant", [3.0, 2.0, 1.0], 0, 61.0)
    assert long.lines == ["pdquant: the first unit took 61 s; the remaining 2 should take about 61 s "
                          "(estimated from the multiply-adds each unit runs)"]
