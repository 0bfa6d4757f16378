"""k-means in JAX and the chunked inverted-file layout used by the approximate search.

The lists of an IVF index have very different sizes, so they are cut into fixed-size *chunks* of
``chunk`` rows (the last chunk of a list padded); a query probes a fixed number of chunks, taken in
the order of their list's centroid score, so the work per query is fixed whatever the imbalance.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_HIGHEST = lax.Precision.HIGHEST


@functools.partial(jax.jit, static_argnames=("block",))
def assign(x: jax.Array, centroids: jax.Array, block: int = 8192) -> jax.Array:
    """Nearest centroid (L2) of each row of ``x`` [n, D], blocked over rows; ``n % block == 0``."""
    half_sq = 0.5 * jnp.sum(centroids * centroids, axis=1)

    def one(xb):
        s = lax.dot_general(xb, centroids, (((1,), (1,)), ((), ())), precision=_HIGHEST) - half_sq
        return jnp.argmax(s, axis=1).astype(jnp.int32)

    return lax.map(one, x.reshape(-1, block, x.shape[1])).reshape(-1)


@functools.partial(jax.jit, static_argnames=("iters",))
def _lloyd(x: jax.Array, init: jax.Array, iters: int) -> jax.Array:
    def step(c, _):
        a = assign(x, c, block=x.shape[0])
        sums = jax.ops.segment_sum(x, a, num_segments=c.shape[0])
        counts = jax.ops.segment_sum(jnp.ones_like(a, jnp.float32), a, num_segments=c.shape[0])
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c), None

    return lax.scan(step, init, None, length=iters)[0]


def kmeans(x: np.ndarray, n_lists: int, *, iters: int = 10, sample: int = 64, seed: int = 0) -> np.ndarray:
    """``[n_lists, D]`` float32 centroids from Lloyd iterations on a sample of ``sample * n_lists`` rows."""
    x = np.asarray(x, np.float32)
    if not 1 <= n_lists <= len(x):
        raise ValueError(f"n_lists must be in [1, {len(x)}] (the number of items), got {n_lists}")
    rng = np.random.default_rng(seed)
    take = min(len(x), sample * n_lists)
    xs = x[np.sort(rng.choice(len(x), take, replace=False))]
    init = xs[rng.choice(take, n_lists, replace=False)]
    return np.asarray(_lloyd(jnp.asarray(xs), jnp.asarray(init), iters))


def chunk_layout(lists: np.ndarray, shards: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunks of each shard's rows grouped by list.

    ``lists`` [N_pad] is the list of every stored row (-1 = padding row), rows split evenly into
    ``shards`` contiguous ranges. Returns ``rows [shards * C, chunk]`` (global row numbers ascending
    within a chunk, -1 = empty) and ``chunk_list [shards * C]`` (-1 = an empty padding chunk); every
    shard has the same ``C``.
    """
    per = len(lists) // shards
    out_rows, out_list = [], []
    for s in range(shards):
        ls = lists[s * per:(s + 1) * per]
        rows = np.flatnonzero(ls >= 0) + s * per
        order = np.argsort(lists[rows], kind="stable")
        rows, lr = rows[order], lists[rows][order]
        bounds = np.flatnonzero(np.r_[True, lr[1:] != lr[:-1], True])
        r_chunks, l_chunks = [], []
        for a, b in zip(bounds[:-1], bounds[1:]):
            for c0 in range(a, b, chunk):
                part = rows[c0:min(b, c0 + chunk)]
                r_chunks.append(np.pad(part, (0, chunk - len(part)), constant_values=-1))
                l_chunks.append(lr[a])
        out_rows.append(np.asarray(r_chunks, np.int32).reshape(-1, chunk))
        out_list.append(np.asarray(l_chunks, np.int32))
    c = max(len(r) for r in out_rows)
    rows = np.concatenate([np.pad(r, ((0, c - len(r)), (0, 0)), constant_values=-1) for r in out_rows])
    clist = np.concatenate([np.pad(cl, (0, c - len(cl)), constant_values=-1) for cl in out_list])
    return rows, clist
