"""The training loop: one step, the fast path, evaluation, checkpoints, DDP and teacher artifacts."""
