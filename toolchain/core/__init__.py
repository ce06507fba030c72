"""Small shared utilities below every stage: atomic writes, checkpoints, execution settings (device, threads,
acceleration, memory), the torchrun session, paths."""
