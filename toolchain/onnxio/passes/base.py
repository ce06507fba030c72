"""Pass infrastructure: in-place passes over an onnx.ModelProto, run to a fixed point.

Usage:
    class MyPass(GraphPass):
        def call(self, model: onnx.ModelProto) -> PassResult:
            ...
            return PassResult(model, modified=changed)

    run_passes(model, [MyPass(), OtherPass()])   # repeats the list until no pass modifies the model

The contract follows onnx_ir's: a pass returns the model it was given (in-place) and says whether it
changed it, so a pass manager can iterate to a fixed point and name the pass that failed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import onnx

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the (same) model and whether anything changed."""

    model: onnx.ModelProto
    modified: bool


class GraphPass:
    """Base class of an in-place pass. Subclasses implement `call`; `__call__` checks the contract."""

    def call(self, model: onnx.ModelProto) -> PassResult:
        raise NotImplementedError

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        result = self.call(model)
        if result.model is not model:
            # A developer error, not a user error: in-place passes must not swap the model object.
            raise RuntimeError(f"Pass developer: {type(self).__name__} is in-place and must return the model it was given")
        if result.modified:
            logger.debug("%s modified the graph", type(self).__name__)
        return result


def run_passes(model: onnx.ModelProto, passes: Sequence[GraphPass], max_rounds: int = 10) -> PassResult:
    """Run `passes` in order, repeatedly, until a whole round modifies nothing (or max_rounds)."""
    modified_any = False
    for _ in range(max_rounds):
        modified_round = False
        for graph_pass in passes:
            modified_round |= graph_pass(model).modified
        modified_any |= modified_round
        if not modified_round:
            break
    return PassResult(model, modified_any)
