"""Top-k kernels over a row-sharded item table (pure JAX; :class:`~recsys_jax.serving.ItemIndex` drives them).

Layout: the table is stored with its rows sorted by item id and padded, so a row number is a proxy
for the id (lower row = lower id). Each shard scans its own rows in blocks (``lax.scan``), keeping a
running top-``w`` per query, so memory is O(batch x (block + w)), never O(batch x N). Shards are
merged with one more ``top_k`` over their ``[shards, batch, w]`` results.

Ties: ``lax.top_k`` puts the lower index first among equal values. The running list holds earlier
(lower) rows before the current block, and the merge concatenates shards in row order, so among
equal scores the lower row, that is the lower id, always comes first.

The kernels return ``w`` candidates; :func:`finish` then drops excluded ids and applies the
per-group cap. Slots that cannot be filled have score ``-inf`` and row ``-1``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

_HIGHEST = lax.Precision.HIGHEST
NEG = -jnp.inf


def _scores(q: jax.Array, rows: jax.Array, scale: jax.Array) -> jax.Array:
    """``[B, R]`` float32 ``<q, row> * scale`` for stored rows ``[R, D]`` of any storage dtype (uint16:
    bfloat16 rows kept as their bits, converted here, one block at a time)."""
    if rows.dtype == jnp.uint16:
        rows = lax.bitcast_convert_type(rows, jnp.bfloat16)
    s = lax.dot_general(q, rows.astype(jnp.float32), (((1,), (1,)), ((), ())), precision=_HIGHEST)
    return s * scale[None, :]


def _merge(run_s, run_r, new_s, new_r, w):
    """Top-``w`` of the running list followed by new candidates (earlier rows first: ties -> lower row)."""
    s = jnp.concatenate([run_s, new_s], axis=1)
    r = jnp.concatenate([run_r, new_r], axis=1)
    top, pos = lax.top_k(s, w)
    return top, jnp.take_along_axis(r, pos, axis=1)


def shard_exact(q, table, scale, ok, offset, *, w: int, block: int, group: int = 64, few: int = 32):
    """Top-``w`` (scores, global rows) of one shard's rows ``[n, D]``; ``ok`` [n] = valid and eligible.

    Pruning, exact: only a block's items scoring strictly above the running ``w``-th score can
    enter (an equal score loses the tie to the earlier, lower row). The block is cut into groups of
    ``group`` rows; when no query has more than ``few`` groups whose maximum beats its threshold
    (the usual case once the running list has filled), only those groups are gathered and merged;
    otherwise the whole block goes through ``top_k``.
    """
    n, d = table.shape
    nb = n // block
    b = q.shape[0]
    g = math.gcd(block, group)
    ng = block // g

    def full(carry, sc, rows):
        if block > w:  # prune the block first: a cheaper merge, same result (top_k is stable)
            sc, pos = lax.top_k(sc, w)
            rows = rows[pos]
        else:
            rows = jnp.broadcast_to(rows, sc.shape)
        return _merge(*carry, sc, rows, w)

    def pruned(carry, sc, rows):
        _, gi = lax.top_k(sc.reshape(b, ng, g).max(axis=2), few)
        gi = jnp.sort(gi, axis=1)  # row order, for the ties
        cand = jnp.take_along_axis(sc.reshape(b, ng, g), gi[:, :, None], axis=1).reshape(b, few * g)
        crow = (rows.reshape(ng, g)[gi]).reshape(b, few * g)
        return _merge(*carry, cand, crow, w)

    def step(carry, xs):
        t, s, v, i = xs
        sc = jnp.where(v[None, :], _scores(q, t, s), NEG)
        rows = offset + i * block + jnp.arange(block, dtype=jnp.int32)
        if few >= ng:
            return full(carry, sc, rows), None
        tau = carry[0][:, -1:]
        need = jnp.max(jnp.sum(sc.reshape(b, ng, g).max(axis=2) > tau, axis=1))
        return lax.cond(need <= few, pruned, full, carry, sc, rows), None

    init = (jnp.full((b, w), NEG, jnp.float32), jnp.full((b, w), -1, jnp.int32))
    xs = (table.reshape(nb, block, d), scale.reshape(nb, block), ok.reshape(nb, block),
          jnp.arange(nb, dtype=jnp.int32))
    (s, r), _ = lax.scan(step, init, xs)
    return s, r


def shard_ivf(q, centroids, chunks, chunk_scale, chunk_ok, chunk_rows, chunk_list, *, w: int,
              probe: int, qblock: int):
    """Approximate top-``w`` of one shard laid out as ``[C, c, D]`` chunks, each of one k-means list.

    Each query scans the ``probe`` chunks whose list centroid scores highest (chunks of one list are
    contiguous, so this probes whole lists in centroid order until the budget of rows is spent).
    """
    b, d = q.shape
    c = chunks.shape[1]
    cent = lax.dot_general(q, centroids, (((1,), (1,)), ((), ())), precision=_HIGHEST)  # [B, P]
    chunk_score = jnp.where(chunk_list >= 0, cent[:, jnp.maximum(chunk_list, 0)], NEG)  # [B, C]
    _, pick = lax.top_k(chunk_score, probe)  # [B, probe]
    pick = jnp.sort(pick, axis=1)  # ascending chunk order: rows ascend within a list

    def one(args):
        qq, pk = args  # [qb, D], [qb, probe]
        t = chunks[pk]  # [qb, probe, c, D]
        s = jnp.einsum("bd,bpcd->bpc", qq, t.astype(jnp.float32), precision=_HIGHEST)
        s = s * chunk_scale[pk]
        s = jnp.where(chunk_ok[pk], s, NEG).reshape(qq.shape[0], probe * c)
        rows = chunk_rows[pk].reshape(qq.shape[0], probe * c)
        # order candidates by row so that ties resolve to the lower id
        order = jnp.argsort(jnp.where(rows < 0, jnp.iinfo(jnp.int32).max, rows), axis=1)
        s = jnp.take_along_axis(s, order, axis=1)
        rows = jnp.take_along_axis(rows, order, axis=1)
        top, pos = lax.top_k(s, w)
        return top, jnp.take_along_axis(rows, pos, axis=1)

    nq = b // qblock
    s, r = lax.map(one, (q.reshape(nq, qblock, d), pick.reshape(nq, qblock, probe)))
    return s.reshape(b, w), r.reshape(b, w)


def merge_shards(s, r, w):
    """``[S, B, w]`` per-shard results (shards in row order) -> ``[B, w]``."""
    shards, b, _ = s.shape
    s = jnp.transpose(s, (1, 0, 2)).reshape(b, shards * w)
    r = jnp.transpose(r, (1, 0, 2)).reshape(b, shards * w)
    top, pos = lax.top_k(s, w)
    return top, jnp.take_along_axis(r, pos, axis=1)


def rank_in_group(groups: jax.Array) -> jax.Array:
    """``[B, C]``: how many earlier candidates of the same row share each candidate's group (< 0: none)."""
    b, c = groups.shape
    pos = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (b, c))
    order = jnp.lexsort((pos, groups), axis=1)  # by group, then by position
    g = jnp.take_along_axis(groups, order, axis=1)
    start = jnp.concatenate([jnp.ones((b, 1), bool), g[:, 1:] != g[:, :-1]], axis=1)
    run_start = lax.cummax(jnp.where(start, pos, 0), axis=1)
    sorted_rank = pos - run_start
    rank = jnp.zeros_like(sorted_rank).at[jnp.arange(b)[:, None], order].set(sorted_rank)
    return jnp.where(groups < 0, 0, rank)


def finish(s, r, ex_rows, groups, *, k: int, cap: int | None):
    """Drop excluded rows (``ex_rows`` [B, M] sorted, -1 = none) and cap each group at ``cap``.

    Returns ``(scores [B, k], rows [B, k], kept [B])`` where ``kept`` counts the candidates that
    survived: when it is below ``k`` and the candidates were not exhausted, the caller widens ``w``.
    """
    keep = ~jnp.isneginf(s)
    if ex_rows is not None and ex_rows.shape[1] > 0:
        m = ex_rows.shape[1]
        at = jax.vmap(jnp.searchsorted)(ex_rows, r)
        hit = jnp.take_along_axis(ex_rows, jnp.minimum(at, m - 1), axis=1) == r
        keep &= ~hit
    if groups is not None:
        g = jnp.where(keep, groups, -1 - jnp.arange(groups.shape[1], dtype=groups.dtype)[None, :])
        keep &= rank_in_group(g) < cap
    kept = jnp.sum(keep, axis=1)
    order = jnp.argsort(~keep, axis=1, stable=True)[:, :k]  # first k kept, in score order
    s = jnp.where(jnp.take_along_axis(keep, order, axis=1), jnp.take_along_axis(s, order, axis=1), NEG)
    r = jnp.where(jnp.isneginf(s), -1, jnp.take_along_axis(r, order, axis=1))
    return s, r, kept
