"""The bit allocation: each layer's bits from the candidates, least total sensitivity within the budget.

Usage:
    allocation = allocate(layers, BitBudget(average_bits=3.0))
    allocation.layer_bits          # (("/conv1/Conv", 8), ("/layer1/.../Conv", 2), ...)
    allocation.average_bits, allocation.size_bytes, allocation.predicted_kl
    allocate_activations(tensors, ActivationBudget(average_bits=5.0))   # the same over activation tensors

A multiple-choice knapsack: choose b_l in the candidates for every layer l, minimising sum_l KL_l(b_l)
subject to sum_l params_l * b_l <= budget. It is solved exactly by a dynamic programme over Pareto fronts:
after each layer, keep every reachable total size with the least KL reaching it, dropping any state that
is both larger and no better than another. The front stays small (a few thousand states for ResNet-20's
21 layers), and no state that could be optimal is dropped, so the result is the true optimum of the
additive model (activations: the same with values per input for parameters). Ties go to the larger size, then to the
earlier layers' higher bits (deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass

from toolchain.errors import ConfigError
from toolchain.quantize.config import DEFAULT_A_BITS_CHOICES, DEFAULT_W_BITS_CHOICES, ActivationBudget, BitBudget
from toolchain.quantize.mixed_precision.activations import TensorSensitivity
from toolchain.quantize.mixed_precision.sensitivity import LayerSensitivity


@dataclass(frozen=True)
class Allocation:
    """The chosen bits per layer and what they add up to."""

    layer_bits: tuple[tuple[str, int], ...]
    size_bits: int
    total_params: int
    budget_bits: int
    predicted_kl: float
    front_size: int

    @property
    def average_bits(self) -> float:
        return self.size_bits / self.total_params

    @property
    def size_bytes(self) -> int:
        return -(-self.size_bits // 8)


def candidate_bits(budget: BitBudget) -> tuple[int, ...]:
    """The budget's candidate widths: its own, or 2, 3, 4, 8 when it names none (QuantConfig narrows that default
    to the target's widths)."""
    return budget.choices if budget.choices is not None else DEFAULT_W_BITS_CHOICES


def budget_bits(params: list[int], budget: BitBudget) -> int:
    """The budget in bits of weights for layers of `params` weights each; ConfigError (saying which budgets are
    possible) when no choice fits it or every choice does."""
    total = sum(params)
    choices = candidate_bits(budget)
    low, high = min(choices), max(choices)
    smallest, largest = total * low, total * high
    if budget.average_bits is not None:
        bits = round(budget.average_bits * total)
    else:
        assert budget.size_bytes is not None, "BitBudget holds one of the two"
        bits = 8 * int(budget.size_bytes)
    if smallest <= bits <= largest:
        return bits
    given = (f"--weight-bits-budget {budget.average_bits}" if budget.average_bits is not None
             else f"--size-budget {budget.size_bytes} bytes")
    side = "below the smallest" if bits < smallest else "above the largest"
    raise ConfigError(f"{given} is {side} possible model with --w-bits-choices {','.join(map(str, choices))}: "
                      f"give {low:.2f}..{high:.2f} average bits, or {-(-smallest // 8):,}..{largest // 8:,} bytes "
                      f"of weights ({total:,} weights)")


def activation_budget_bits(elements: list[int], budget: ActivationBudget) -> int:
    """The activation budget in bits per input for tensors of `elements` values each; ConfigError (saying which
    budgets are possible) when no choice fits it or every choice does."""
    total = sum(elements)
    choices = budget.choices or DEFAULT_A_BITS_CHOICES
    low, high = min(choices), max(choices)
    bits = round(budget.average_bits * total)
    if total * low <= bits <= total * high:
        return bits
    side = "below the smallest" if bits < total * low else "above the largest"
    raise ConfigError(f"--a-bits-budget {budget.average_bits} is {side} possible model with --a-bits-choices "
                      f"{','.join(map(str, choices))}: give {low:.2f}..{high:.2f} average bits per activation value "
                      f"({total:,} values per input)")


def allocate(layers: list[LayerSensitivity], budget: BitBudget) -> Allocation:
    """The exact optimum of the additive model under `budget` (see the module docstring)."""
    if not layers:
        raise ConfigError("the model has no weighted layer to give bits to; drop the bit budget")
    capacity = budget_bits([layer.params for layer in layers], budget)
    return _solve([layer.node for layer in layers], [layer.params for layer in layers], [layer.kl for layer in layers],
                  candidate_bits(budget), capacity)


def allocate_activations(tensors: list[TensorSensitivity], budget: ActivationBudget) -> Allocation:
    """allocate() for activations: each tensor's bits, the least total KL whose mean bits per value fit `budget`.
    Allocation.layer_bits then holds (tensor, bits) and total_params counts activation values per input."""
    if not tensors:
        raise ConfigError("the model has no activation with parameters of its own to give bits to; drop --a-bits-budget")
    capacity = activation_budget_bits([t.elements for t in tensors], budget)
    return _solve([t.tensor for t in tensors], [t.elements for t in tensors], [t.kl for t in tensors],
                  budget.choices or DEFAULT_A_BITS_CHOICES, capacity)


def _solve(names: list[str], sizes: list[int], costs: list[dict[int, float]], candidates: tuple[int, ...],
           capacity: int) -> Allocation:
    """The Pareto-front dynamic programme of the module docstring over items of `sizes` with `costs` per width."""
    choices = sorted(candidates, reverse=True)
    # A state: (size in bits, total KL, index of the previous state in the previous front, bits of this item).
    fronts: list[list[tuple[int, float, int, int]]] = [[(0, 0.0, -1, 0)]]
    for size_of_item, cost in zip(sizes, costs):
        states = []
        for index, (size, kl, _, _) in enumerate(fronts[-1]):
            for bits in choices:
                new_size = size + size_of_item * bits
                if new_size <= capacity:
                    states.append((new_size, kl + cost[bits], index, bits))
        states.sort(key=lambda s: (s[0], s[1], -s[3]))
        front: list[tuple[int, float, int, int]] = []
        for state in states:  # increasing size: keep a state only when it lowers the best KL so far
            if not front or state[1] < front[-1][1]:
                if front and state[0] == front[-1][0]:
                    continue
                front.append(state)
        fronts.append(front)
    # the callers checked that every item at its smallest width fits, so the last front is never empty
    best = min(range(len(fronts[-1])), key=lambda i: (fronts[-1][i][1], -fronts[-1][i][0]))
    chosen = []
    index = best
    for depth in range(len(names), 0, -1):
        size, kl, parent, bits = fronts[depth][index]
        chosen.append(bits)
        index = parent
    chosen.reverse()
    final = fronts[-1][best]
    return Allocation(tuple(zip(names, chosen)), final[0], sum(sizes), capacity, final[1], max(len(f) for f in fronts))
