"""Non-learned baselines, evaluated exactly like a model (same batches, exclusions and metrics).

Most-popular scores item ``i`` by its count in the training part of the splits; a user "embedding"
of ``[1]`` against a ``[N + 1, 1]`` table of counts makes its ranking the ordinary full-corpus one
(ties broken pessimistically by default, like every model).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recsys_jax.eval.evaluate import accumulate, batch_metrics, eval_iterator
from recsys_jax.eval.metrics import DEFAULT_KS


def most_popular_table(counts) -> np.ndarray:
    """``[N + 1, 1]`` float32 item "embeddings" whose dot product with ``[1]`` is the item's count."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.shape[0] < 2:
        raise ValueError(f"counts must be [N + 1] with N >= 1 (row 0 = padding), got shape {counts.shape}")
    table = counts.astype(np.float32)[:, None]
    table[0] = 0.0
    return table


def evaluate_most_popular(dataset, split: str = "test", *, counts=None, batch_size: int = 256,
                          ks: Sequence[int] = DEFAULT_KS, ties: str = "pessimistic", exclude_history: bool = True,
                          progress: bool = False) -> dict[str, float]:
    """Full-corpus metrics of most-popular on ``split`` (``counts`` default: the training counts)."""
    table = jnp.asarray(most_popular_table(dataset.item_counts if counts is None else counts))
    kw = dict(ks=tuple(int(k) for k in ks), ties=ties, exclude_history=exclude_history)
    batches = eval_iterator(dataset, split, batch_size=batch_size, max_len=1,
                            history_len=None if exclude_history else 0, shard_index=0, shard_count=1)
    return accumulate(lambda b: _step(table, b, **kw), batches, progress=progress, desc=f"most-popular {split}")


@functools.partial(jax.jit, static_argnames=("ks", "ties", "exclude_history"))
def _step(table, batch, *, ks, ties, exclude_history):
    user = jnp.ones((batch["target_id"].shape[0], 1), jnp.float32)
    return batch_metrics(user, table, batch, ks=ks, ties=ties, exclude_history=exclude_history)
