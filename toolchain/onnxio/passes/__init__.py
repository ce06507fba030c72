"""Graph passes over onnx.ModelProto with a small contract: each returns PassResult(model, modified).

Usage:
    from toolchain.onnxio.passes import run_passes, FoldConstantsPass, RemoveUnusedPass
    result = run_passes(model, [FoldConstantsPass(), RemoveUnusedPass()])
"""

from toolchain.onnxio.passes.base import GraphPass, PassResult, run_passes
from toolchain.onnxio.passes.cleanup import (
    EliminateIdentityPass,
    FoldConstantsPass,
    LiftConstantNodesPass,
    RemoveUnusedPass,
    ReshapeToFlattenPass,
    cleanup_passes,
)
from toolchain.onnxio.passes.output_types import CompleteOutputTypesPass

__all__ = [  # noqa: RUF022 - grouped by role, as the comments say
    # infrastructure
    "GraphPass",
    "PassResult",
    "run_passes",
    # clean-up
    "EliminateIdentityPass",
    "FoldConstantsPass",
    "LiftConstantNodesPass",
    "RemoveUnusedPass",
    "ReshapeToFlattenPass",
    "cleanup_passes",
    # types
    "CompleteOutputTypesPass",
]
