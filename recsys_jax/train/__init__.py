"""Training pieces for recsys_jax (losses; the task is built on them)."""
