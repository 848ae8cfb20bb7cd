"""Training entry points that run in worker processes (DDP distillation)."""
