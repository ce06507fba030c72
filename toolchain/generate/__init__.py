"""Synthetic calibration data: images optimised so that every BatchNormalization node sees its running statistics.

Usage:
    from toolchain.generate import generate, preset
    calib = generate(model_proto, pre, "dgh", n=1024, config=preset("default", "dgh"), seed=0)
    calib = generate(model_proto, pre, "fdda", n=512, real_data="few_labelled/", seed=0)   # labels too
    save_calibration("calib_data/dgh1024.npz", calib)

    # K processes, one calibration set (rank 0 gets it, the other ranks None):
    #   torchrun --nproc-per-node 2 -m toolchain.cli generate MODEL.onnx --method dgh -n 1024 -o calib_data/dgh1024.npz
    calib = generate(model_proto, pre, "dgh", n=1024, distributed=distributed_from_env())

Methods: "dgh" (docs/methods.md section 2), "fdda" (section 7: directly optimised labelled images),
"bns" (per-batch BN matching, ZeroQ-style), "gaussian" (clipped noise, the floor), "real" (sampled
real images). Modules: config (settings, presets), teacher (frozen ONNX model and BN moments), augment
(DGH's image pipeline), losses, schedule (plateau lr), engine (the loop), fdda (class centres),
checkpoint, distributed (torch.distributed scale-out), generate (the entry point).
"""

from toolchain.generate.config import (
    METHODS,
    PRESETS,
    AugmentConfig,
    FDDAConfig,
    GenerationConfig,
    OptimConfig,
    preset,
)
from toolchain.core.distributed import Distributed, TorchDistributed, distributed_from_env, distributed_session
from toolchain.generate.generate import generate, model_sha256
from toolchain.generate.teacher import Teacher

__all__ = [
    # entry point
    "generate", "preset", "model_sha256",
    # scale-out
    "Distributed", "TorchDistributed", "distributed_from_env", "distributed_session",
    # settings
    "GenerationConfig", "AugmentConfig", "OptimConfig", "FDDAConfig", "METHODS", "PRESETS",
    # building blocks
    "Teacher",
]
