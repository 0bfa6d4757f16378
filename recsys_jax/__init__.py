"""recsys_jax: generative sequential retrieval (HSTU, SASRec, two-tower) on the core_jax runtime."""

import core_jax  # noqa: F401  (sets the runtime conventions; must come first)

from recsys_jax.retriever import Retriever, UnknownItemError  # noqa: E402

__all__ = ["Retriever", "UnknownItemError"]
