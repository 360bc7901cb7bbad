"""Training: the Ray Train loop, per-stage tasks and objectives, the data reader, the latent cache, checkpoints."""
