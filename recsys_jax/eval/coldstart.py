"""Cold-start evaluation: cold and warm targets apart, and users by how much history they have.

With ``data.cold_item_fraction`` a seeded set of items is held out of training entirely
(:mod:`recsys_jax.data.cold_items`); here every test (or validation) user is ranked over the FULL corpus
exactly as in :mod:`recsys_jax.eval.evaluate` (same exclusions and ties), and the per-user ranks are
grouped:

* ``cold`` / ``warm``: users whose target is a cold / warm item (hr@k is recall@k: one held-out target);
* ``history_length``: hr@k by the user's whole history length (buckets 1-3, 4-10, 11-50, >50 events);
* ``truncated_history``: every user again with only its last 1, 2 or 3 events (a new user: the model sees
  those and excludes those), so cold users are measured on data whose users all have long histories;

each with most-popular's numbers beside the model's (counts of the training part, cold items at zero:
they have no training interactions).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recsys_jax.eval.baselines import most_popular_table
from recsys_jax.eval.evaluate import eval_iterator, history_length, user_embeddings
from recsys_jax.eval.metrics import compute_ranks, metrics_from_ranks

BUCKETS = ((1, 3), (4, 10), (11, 50), (51, None))
TRUNCATE = (1, 2, 3)


def _bucket_name(lo: int, hi: int | None) -> str:
    return f">{lo - 1}" if hi is None else f"{lo}-{hi}"


def keep_last(item_ids: jax.Array, h: int) -> jax.Array:
    """``item_ids [B, L]`` (0 = pad, either side) with only the last ``h`` real items of each row kept."""
    mask = item_ids > 0
    from_end = jnp.cumsum(mask[:, ::-1], axis=1)[:, ::-1]  # real items at or after each position
    return jnp.where(mask & (from_end <= h), item_ids, 0)


@functools.partial(nnx.jit, static_argnames=("ties", "exclude_history", "truncate"))
def _ranks(model, pop_table, batch, *, ties: str, exclude_history: bool, truncate: int):
    """``(model ranks [B], most-popular ranks [B])`` of each target (history excluded when asked)."""
    ids, ts = batch["item_ids"], batch.get("timestamps")
    if truncate:
        ids = keep_last(ids, truncate)
        ts = None if ts is None else jnp.where(ids > 0, ts, 0)
        exclude = ids if exclude_history else None
    else:
        exclude = batch["history_ids"] if exclude_history else None
    target = batch["target_id"]
    user = user_embeddings(model, ids, ts)
    ranks = compute_ranks(user, target, model.item_embeddings(), exclude, ties=ties)
    ones = jnp.ones((target.shape[0], 1), jnp.float32)
    pop = compute_ranks(ones, target, pop_table, exclude, ties=ties)
    return ranks, pop


def _group(ranks: np.ndarray, pop: np.ndarray, where: np.ndarray, ks: Sequence[int]) -> dict:
    n = int(where.sum())
    if n == 0:
        return {"count": 0}
    out = {k: round(float(v), 6) for k, v in metrics_from_ranks(ranks[where], ks).items()}
    base = {k: round(float(v), 6) for k, v in metrics_from_ranks(pop[where], ks).items()}
    return {**out, "count": n, "most_popular": base}


def coldstart_metrics(model: nnx.Module, dataset, cold: np.ndarray, split: str = "test", *, batch_size: int = 256,
                      max_len: int = 50, padding: str = "left", ks: Sequence[int] = (10, 50, 200),
                      ties: str = "pessimistic", exclude_history: bool = True,
                      truncate: Sequence[int] = TRUNCATE) -> dict:
    """``{"cold", "warm", "history_length", "truncated_history"}`` metric groups of ``model`` on ``split``
    (this process, no mesh); ``cold``: the ``[N + 1]`` bool mask of held-out items."""
    if jax.process_count() > 1:
        raise ValueError("cold-start metrics are computed in one process: run `recsys-jax eval` without "
                         "--num-processes for a run with data.cold_item_fraction")
    cold = np.asarray(cold, bool)
    if cold.shape != (dataset.num_items + 1,):
        raise ValueError(f"cold item mask has shape {cold.shape}; expected [{dataset.num_items + 1}]")
    ks = tuple(int(k) for k in ks)
    pop_table = jnp.asarray(most_popular_table(np.where(cold, 0, dataset.item_counts)))
    kw = dict(ties=ties, exclude_history=exclude_history)
    runs = {0: ([], [])} | {int(h): ([], []) for h in truncate}
    targets, lengths = [], []
    for batch in eval_iterator(dataset, split, batch_size=batch_size, max_len=max_len, padding=padding,
                               history_len=history_length(dataset), shard_index=0, shard_count=1):
        valid = np.asarray(batch["valid"])
        targets.append(np.asarray(batch["target_id"])[valid])
        lengths.append((np.asarray(batch["history_ids"]) > 0).sum(axis=1)[valid])
        for h, (r_model, r_pop) in runs.items():
            r, p = jax.device_get(_ranks(model, pop_table, batch, truncate=h, **kw))
            r_model.append(np.asarray(r)[valid])
            r_pop.append(np.asarray(p)[valid])
    if not targets:
        raise ValueError(f"no evaluation batches: the {split} split is empty")
    target, length = np.concatenate(targets), np.concatenate(lengths)
    ranks = {h: (np.concatenate(a), np.concatenate(b)) for h, (a, b) in runs.items()}
    r, p = ranks[0]
    is_cold = cold[target]
    out = {"cold": _group(r, p, is_cold, ks), "warm": _group(r, p, ~is_cold, ks),
           "history_length": {_bucket_name(lo, hi): _group(r, p, (length >= lo) & (length <= (hi or length.max())),
                                                           ks) for lo, hi in BUCKETS},
           "truncated_history": {str(h): _group(*ranks[h], np.ones(len(target), bool), ks) for h in truncate}}
    out["cold_items"] = int(cold.sum())
    return out
