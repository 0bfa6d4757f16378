"""Future-window retrieval metrics: recall@k of ALL the user's actions in the next window, and next-item hit@k.

For a user embedding ``u``, the items are ranked by ``u . item`` over the full corpus (ids ``1..N``;
``exclude`` ids -- the user's earlier events -- removed); with ``future`` the (0-padded) window of the
next events, oldest first:

* ``recall@k`` = |top-k ∩ future| / |future| (distinct ids), averaged over users with a non-empty window;
* ``hr@k`` (next item) = whether the window's first event is in the top k.

Ties between scores go to the lower item id (``lax.top_k``'s order). Returned as sums plus ``count``
per batch (:func:`future_window_sums`), so batches combine exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def future_window_sums(user: jax.Array, table: jax.Array, future: jax.Array, exclude: jax.Array | None,
                       ks: Sequence[int]) -> dict[str, jax.Array]:
    """Sums over the batch of ``recall@k`` / ``hr@k`` and ``count``. ``user [B, D]``, ``table [N + 1, D]``,
    ``future [B, W]`` and ``exclude [B, H]`` int ids (0 = pad)."""
    b = user.shape[0]
    scores = user @ table.T  # [B, N + 1]
    scores = scores.at[:, 0].set(-jnp.inf)
    if exclude is not None:
        rows = jnp.broadcast_to(jnp.arange(b)[:, None], exclude.shape)
        scores = scores.at[rows, exclude].set(-jnp.inf)  # id 0 (padding) is -inf already
    _, top = jax.lax.top_k(scores, max(ks))  # [B, K]
    real = future > 0
    # distinct future ids: a repeat inside the window counts once
    w = future.shape[1]
    earlier = jnp.tril(jnp.ones((w, w), bool), -1)  # [i, j]: j < i
    first = real & ~jnp.any((future[:, :, None] == future[:, None, :]) & earlier[None], axis=2)
    n_future = jnp.sum(first, axis=1)
    valid = n_future > 0
    nxt = jnp.take_along_axis(future, jnp.argmax(real, axis=1)[:, None], axis=1)  # the first real entry
    out = {"count": jnp.sum(valid.astype(jnp.float32))}
    for k in ks:
        hit = jnp.any(top[:, None, :k] == future[:, :, None], axis=2) & first  # [B, W]
        out[f"recall@{k}"] = jnp.sum(jnp.where(valid, jnp.sum(hit, axis=1) / jnp.maximum(n_future, 1), 0.0))
        out[f"hr@{k}"] = jnp.sum(jnp.where(valid, jnp.any(top[:, :k] == nxt, axis=1), False))
    return out


future_window_sums_jit = jax.jit(future_window_sums, static_argnames=("ks",))


def finalize(sums: dict[str, float]) -> dict[str, float]:
    n = max(sums["count"], 1.0)
    return {k: (float(v) / n if k != "count" else int(v)) for k, v in sums.items()}


def evaluate_vectors(users: np.ndarray, table: np.ndarray, future: np.ndarray, exclude: np.ndarray | None,
                     ks: Sequence[int], batch_size: int = 256) -> dict[str, float]:
    """:func:`future_window_sums` over ``users [U, D]`` in batches; exact means."""
    ks = tuple(int(k) for k in ks)
    sums: dict[str, float] = {}
    table = jnp.asarray(table)
    for i in range(0, len(users), batch_size):
        sl = slice(i, i + batch_size)
        part = future_window_sums_jit(jnp.asarray(users[sl]), table, jnp.asarray(future[sl]),
                                      None if exclude is None else jnp.asarray(exclude[sl]), ks)
        for k, v in jax.device_get(part).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return finalize(sums)
