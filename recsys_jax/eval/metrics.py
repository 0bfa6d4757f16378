"""Full-corpus ranking metrics and top-k retrieval over items ``1..N``.

Scores are dot products ``<user, item>`` against the whole ``[N + 1, D]`` table (row 0 = padding,
never ranked). Items in ``exclude_ids`` (``[B, M]``, 0 = no item; typically the user's history)
are removed from the ranking. Exclusion never builds a ``[B, N + 1]`` scatter: ranks subtract the
excluded items' own scores from the counts, and :func:`top_k` takes the top ``k + M`` and drops the
excluded ones. Everything else is elementwise or a reduction over the item axis, so both work under
``jit`` with the item table (and so the scores) sharded by rows over a mesh.

Ranks are exact and 1-based. Ties with the target are resolved by ``ties``:
``"pessimistic"`` (default: every tied item ranks ahead, so a collapsed model scoring everything the
same gets no credit), ``"optimistic"`` (``1 + #items scoring strictly higher``) or ``"average"``.
A target that is padding (0) or is itself excluded gets rank ``inf`` (a miss everywhere), which
matches what :func:`top_k` can return.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

DEFAULT_KS = (10, 50, 200)
TIES = ("pessimistic", "optimistic", "average")
_HIGHEST = jax.lax.Precision.HIGHEST


def _check(user_emb: jax.Array, item_table: jax.Array, exclude_ids: jax.Array | None) -> None:
    if user_emb.ndim != 2 or item_table.ndim != 2 or user_emb.shape[1] != item_table.shape[1]:
        raise ValueError(
            f"expected user_emb [B, D] and item_table [N + 1, D], got {user_emb.shape} and {item_table.shape}"
        )
    if item_table.shape[0] < 2:
        raise ValueError(f"item_table needs row 0 (padding) and at least one item, got {item_table.shape}")
    if exclude_ids is not None and (exclude_ids.ndim != 2 or exclude_ids.shape[0] != user_emb.shape[0]):
        raise ValueError(f"exclude_ids must be [B={user_emb.shape[0]}, M] (0 = none), got {exclude_ids.shape}")


def score_all(user_emb: jax.Array, item_table: jax.Array) -> jax.Array:
    """``[B, N + 1]`` float32 scores, ``-inf`` in column 0 (padding)."""
    s = jnp.matmul(user_emb.astype(jnp.float32), item_table.astype(jnp.float32).T, precision=_HIGHEST)
    col = jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
    return jnp.where(col == 0, -jnp.inf, s)


def _unique_exclusions(exclude_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sorted ids per row and a mask keeping each real (> 0) id once."""
    ex = jnp.sort(exclude_ids.astype(jnp.int32), axis=1)
    first = jnp.concatenate([jnp.ones_like(ex[:, :1], bool), ex[:, 1:] != ex[:, :-1]], axis=1)
    return ex, first & (ex > 0)


@functools.partial(jax.jit, static_argnames=("ties",))
def compute_ranks(
    user_emb: jax.Array,
    target_ids: jax.Array,
    item_table: jax.Array,
    exclude_ids: jax.Array | None = None,
    *,
    ties: str = "pessimistic",
) -> jax.Array:
    """``[B]`` float32 exact 1-based rank of each target among items ``1..N`` minus exclusions."""
    _check(user_emb, item_table, exclude_ids)
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if target_ids.shape != user_emb.shape[:1]:
        raise ValueError(f"target_ids must be [B={user_emb.shape[0]}], got {target_ids.shape}")
    s = score_all(user_emb, item_table)
    tgt = target_ids.astype(jnp.int32)
    t = jnp.take_along_axis(s, tgt[:, None], axis=1)  # [B, 1], same op as every other score
    greater = jnp.sum(s > t, axis=1)
    geq = jnp.sum(s >= t, axis=1)
    bad = tgt <= 0
    if exclude_ids is not None and exclude_ids.shape[1] > 0:
        ex, keep = _unique_exclusions(exclude_ids)
        ex_s = jnp.take_along_axis(s, ex, axis=1)
        greater = greater - jnp.sum(keep & (ex_s > t), axis=1)
        geq = geq - jnp.sum(keep & (ex_s >= t), axis=1)
        bad = bad | jnp.any(keep & (ex == tgt[:, None]), axis=1)
    greater, geq = greater.astype(jnp.float32), geq.astype(jnp.float32)
    rank = {"pessimistic": geq, "optimistic": 1.0 + greater, "average": 0.5 * (1.0 + greater + geq)}[ties]
    return jnp.where(bad, jnp.inf, rank)


def metrics_from_ranks(
    ranks: jax.Array,
    ks: Sequence[int] = DEFAULT_KS,
    weights: jax.Array | None = None,
    *,
    reduce: str = "mean",
) -> dict[str, jax.Array]:
    """HR@k, NDCG@k (one relevant item: ``1 / log2(1 + rank)`` if rank <= k) and MRR.

    ``reduce="mean"`` averages over examples with weight > 0 (``weights`` default all ones);
    ``reduce="sum"`` returns weighted sums plus ``"count"`` for accumulating over batches (then
    divide with :func:`finalize_metrics`).
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {tuple(ks)}")
    ranks = jnp.asarray(ranks, jnp.float32)
    w = jnp.ones_like(ranks) if weights is None else jnp.asarray(weights, jnp.float32)
    out = {}
    for k in ks:
        hit = ranks <= k
        out[f"hr@{k}"] = jnp.sum(w * hit)
        out[f"ndcg@{k}"] = jnp.sum(w * jnp.where(hit, 1.0 / jnp.log2(1.0 + ranks), 0.0))
    out["mrr"] = jnp.sum(w * (1.0 / ranks))
    count = jnp.sum(w)
    if reduce == "sum":
        out["count"] = count
        return out
    return {name: v / jnp.maximum(count, 1e-12) for name, v in out.items()}


def finalize_metrics(sums: dict[str, jax.Array]) -> dict[str, float]:
    """Means from accumulated ``reduce="sum"`` metrics (must hold ``"count"``)."""
    if "count" not in sums:
        raise ValueError("finalize_metrics needs the 'count' entry of metrics_from_ranks(reduce='sum')")
    count = max(float(sums["count"]), 1e-12)
    return {name: float(v) / count for name, v in sums.items() if name != "count"}


@functools.partial(jax.jit, static_argnames=("ks", "ties"))
def ranking_metrics(
    user_emb: jax.Array,
    target_ids: jax.Array,
    item_table: jax.Array,
    exclude_ids: jax.Array | None = None,
    weights: jax.Array | None = None,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    ties: str = "pessimistic",
) -> dict[str, jax.Array]:
    """One batch: weighted SUMS of hr@k, ndcg@k, mrr and ``count`` (add over batches, then
    :func:`finalize_metrics`). ``weights`` ([B], default ones) drops padded examples with 0."""
    ranks = compute_ranks(user_emb, target_ids, item_table, exclude_ids, ties=ties)
    if weights is None:
        weights = (target_ids > 0).astype(jnp.float32)
    return metrics_from_ranks(ranks, ks, weights, reduce="sum")


@functools.partial(jax.jit, static_argnames=("k",))
def top_k(
    user_emb: jax.Array,
    item_table: jax.Array,
    k: int,
    exclude_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Top ``k`` items ``1..N`` by score, excluding ``exclude_ids`` ([B, M], 0 = none).

    Returns ``(scores [B, k] float32, ids [B, k] int32)``, best first; slots that cannot be filled
    (fewer than ``k`` eligible items) have score ``-inf`` and id 0.
    """
    _check(user_emb, item_table, exclude_ids)
    num_rows = item_table.shape[0]
    if not 1 <= k <= num_rows - 1:
        raise ValueError(f"k must be in [1, N={num_rows - 1}], got {k}")
    s = score_all(user_emb, item_table)
    m = 0 if exclude_ids is None else exclude_ids.shape[1]
    vals, idx = jax.lax.top_k(s, min(k + m, num_rows))
    if m > 0:
        ex, keep = _unique_exclusions(exclude_ids)
        hit = jnp.any((idx[:, :, None] == ex[:, None, :]) & keep[:, None, :], axis=-1)
        vals = jnp.where(hit, -jnp.inf, vals)
        vals, pos = jax.lax.top_k(vals, k)
        idx = jnp.take_along_axis(idx, pos, axis=1)
    else:
        vals, idx = vals[:, :k], idx[:, :k]
    idx = jnp.where(jnp.isneginf(vals), 0, idx).astype(jnp.int32)
    return vals, idx
