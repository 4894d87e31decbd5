"""Training infrastructure: checkpoints, devices, distributed helpers."""
