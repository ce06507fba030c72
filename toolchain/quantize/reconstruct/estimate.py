"""How long a reconstruction will take, from the first unit's time and the work each unit does.

Usage:
    costs = unit_costs(float_model, partition.units, prediction_difference=True)
    seconds_left = remaining_seconds(costs, done=1, seconds_done=95.0)
    announce_remaining(bar, "pdquant", costs, first=0, seconds=95.0)   # one line on the progress bar's stream

Every iteration of a unit runs the unit forward and backward on the batch (twice the batch with the PD
term) and, with the PD term, the float rest of the network forward and backward. Its cost is taken as
proportional to the multiply-adds of those layers at batch 1 (shape inference on the float model):
on a 224x224 MobileNet the first units, which run nearly the whole network behind them, cost several
times the last ones, so counting units alone would mislead. Without shapes (a model shape inference
cannot follow) every unit counts the same.
"""

from __future__ import annotations

import sys

import onnx

from toolchain.core.execution import describe_duration
from toolchain.quantize.reconstruct.units import Unit
from toolchain.runtimes.coverage import layer_macs


def unit_costs(float_model: onnx.ModelProto, units: list[Unit], prediction_difference: bool) -> list[float]:
    """A relative cost per unit (same order), comparable with each other only."""
    macs = layer_macs(float_model)
    if not macs:
        return [1.0] * len(units)
    own = [float(sum(macs.get(node, 0) for node in unit.nodes)) for unit in units]
    total = float(sum(macs.values()))
    costs, finished = [], 0.0
    for unit, work in zip(units, own):
        finished += work
        tail = total - finished if prediction_difference and unit.decides_prediction else 0.0
        costs.append(max(2.0 * work + tail, 1.0))  # the unit's layers see two batches with PD (X_q for the tail)
    return costs


def remaining_seconds(costs: list[float], done: int, seconds_done: float) -> float:
    """Seconds for units done..end at the rate the first `done` units ran (0 when nothing is left)."""
    spent = sum(costs[:done])
    if done <= 0 or spent <= 0:
        return 0.0
    return seconds_done * sum(costs[done:]) / spent


def announce_remaining(bar, method: str, costs: list[float], first: int, seconds: float) -> None:
    """After the first unit of this run: how long the rest should take, when that is worth saying (> 1 min)."""
    left = remaining_seconds(costs[first:], 1, seconds)
    if left > 60:
        bar.write(f"{method}: the first unit took {describe_duration(seconds)}; the remaining {len(costs) - first - 1} should take "
                  f"about {describe_duration(left)} (estimated from the multiply-adds each unit runs)", file=sys.stderr)
