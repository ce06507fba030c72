"""Synthetic calibration data: images optimised so that every BatchNormalization node sees its running statistics.

Usage:
    from toolchain.generate.config import preset
    from toolchain.generate.generate import generate
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
checkpoint, generate (the entry point), outputs (the stage to a file). The torchrun session is
core.distributed. This face imports nothing: importing a submodule does not load torch through it.
"""
