"""Evaluation for recsys_jax: full-corpus ranking metrics and top-k retrieval."""
