"""Autoregressive next-item loss: sampled (or full) softmax at every real position.

For each position with ``mask`` set, the candidates are the positive ``target_ids`` and negatives:

* ``num_negatives`` ids drawn uniformly from ``1..N`` (one draw shared by the whole batch), and/or
* in-batch negatives (``in_batch_negatives=True``): the targets of the other positions of the batch
  (all of them, or ``num_in_batch_negatives`` positions drawn with replacement from the real ones), or
* every item (``full_softmax=True``): the full cross-entropy over the corpus.

With ``max_targets > 0`` the real positions are first gathered into that many rows (padding positions
are most of a batch of short sequences, so this makes many negatives, or all items, cheap); real
positions beyond it are dropped from the step's loss and counted in ``dropped_targets``.

A negative equal to the position's own target is masked out (this also drops the position itself).
Logits are ``<u, e> / temperature`` (both L2-normalised when ``l2_normalize``).

logQ correction (Yi et al., RecSys 2019): in-batch candidates are drawn from the data distribution,
so popular items are over-represented as negatives. With ``logq_correction`` and in-batch negatives
on, every logit is reduced by the log-probability of drawing that item under the sampler that
proposed it: ``log_q[id]`` for the positive and the in-batch negatives (``log_q`` from item frequency
counts, see :func:`log_q_from_counts`), ``log(1 / N)`` for uniform negatives. Without in-batch
negatives there is nothing to correct (a uniform sampler shifts every negative equally).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from recsys_jax.models.embeddings import l2_normalize

_MASKED = -1e9


@dataclasses.dataclass(frozen=True)
class SampledSoftmaxConfig:
    num_negatives: int = 128  # uniform random negatives, shared across the batch (0 = none)
    in_batch_negatives: bool = False  # use the other positions' targets as negatives
    # k > 0: k positions drawn (with replacement) from the batch's real ones; 0: every position
    # (a [B*L, B*L] logit matrix: only for small batches)
    num_in_batch_negatives: int = 512
    temperature: float = 0.05
    l2_normalize: bool = True
    logq_correction: bool = True  # only used with in_batch_negatives; needs log_q
    full_softmax: bool = False  # every item is a negative (num_negatives and in-batch negatives unused)
    max_targets: int = 0  # > 0: gather the real positions into this many rows first (0: score every position)

    def validate(self) -> None:
        if self.num_negatives < 0 or self.num_in_batch_negatives < 0 or self.max_targets < 0:
            raise ValueError(f"negative counts and max_targets must be >= 0, got {self}")
        if self.full_softmax and self.in_batch_negatives:
            raise ValueError("full_softmax already scores every item: set in_batch_negatives=False")
        if self.num_negatives == 0 and not self.in_batch_negatives and not self.full_softmax:
            raise ValueError("no negatives: set num_negatives > 0, in_batch_negatives=True or full_softmax=True")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def log_q_from_counts(counts) -> np.ndarray:
    """``[N + 1]`` log sampling probabilities ``log(count / total)`` from per-item counts.

    ``counts[i]`` is how often item ``i`` appears as a target (row 0 = padding, ignored). Counts
    below 1 are raised to 1 so unseen items get a finite (small) probability.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.shape[0] < 2:
        raise ValueError(f"counts must be a 1-D array of length N + 1 >= 2, got shape {c.shape}")
    if np.any(c < 0):
        raise ValueError("counts must be non-negative")
    c = np.maximum(c, 1.0)
    c[0] = 0.0
    with np.errstate(divide="ignore"):
        out = np.log(c / c[1:].sum())
    out[0] = 0.0
    return out.astype(np.float32)


def sampled_softmax_loss(
    user_emb: jax.Array,
    target_ids: jax.Array,
    mask: jax.Array,
    item_table: jax.Array,
    rng: jax.Array,
    cfg: SampledSoftmaxConfig,
    log_q: jax.Array | None = None,
    negative_pool: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean sampled-softmax loss over real positions, and metrics.

    Args:
      user_emb: ``[..., D]`` user embedding per position (e.g. ``[B, L, D]``).
      target_ids: ``[...]`` int, the next item at each position (0 = none).
      mask: ``[...]`` bool/0-1, which positions count (positions with target 0 never count).
      item_table: ``[N + 1, D]`` item embeddings (row 0 = padding, never sampled).
      rng: PRNG key for the negatives.
      cfg: :class:`SampledSoftmaxConfig`.
      log_q: ``[N + 1]`` log sampling probabilities; required with in-batch negatives + logQ.
      negative_pool: ``[M]`` ids the uniform negatives are drawn from (and, with ``full_softmax``, the only
        columns ranked); default every id ``1..N`` (e.g. the warm items when cold ones are held out).
    Returns:
      ``(loss, {"loss", "num_targets", "dropped_targets", "positive_logit", "in_sample_accuracy"})``.
    """
    cfg.validate()
    d = user_emb.shape[-1]
    if target_ids.shape != user_emb.shape[:-1] or mask.shape != target_ids.shape:
        raise ValueError(
            f"shapes disagree: user_emb {user_emb.shape} needs target_ids and mask of shape "
            f"{user_emb.shape[:-1]}, got {target_ids.shape} and {mask.shape}"
        )
    if item_table.ndim != 2 or item_table.shape[1] != d:
        raise ValueError(f"item_table must be [N + 1, {d}], got {item_table.shape}")
    use_logq = cfg.in_batch_negatives and cfg.logq_correction
    if use_logq and log_q is None:
        raise ValueError("logq_correction with in-batch negatives needs log_q ([N + 1], see log_q_from_counts)")
    num_items = item_table.shape[0] - 1

    u = user_emb.reshape(-1, d).astype(jnp.float32)
    tgt = target_ids.reshape(-1).astype(jnp.int32)
    valid = mask.reshape(-1).astype(bool) & (tgt > 0)
    num_real = jnp.sum(valid.astype(jnp.float32))
    if cfg.max_targets > 0:
        (rows,) = jnp.nonzero(valid, size=cfg.max_targets, fill_value=0)
        u, tgt = u[rows], tgt[rows]
        valid = valid[rows] & (jnp.arange(cfg.max_targets) < num_real)
    table = l2_normalize(item_table) if cfg.l2_normalize else item_table
    if cfg.l2_normalize:
        u = l2_normalize(u)
    inv_t = 1.0 / cfg.temperature

    pos_logit = jnp.sum(u * jnp.take(table, tgt, axis=0), axis=-1) * inv_t
    if use_logq:
        pos_logit = pos_logit - jnp.take(log_q, tgt)
    neg_logits = []
    rng_uniform, rng_batch = jax.random.split(rng)
    if cfg.full_softmax:
        logits = (u @ table.T) * inv_t  # [T, N + 1]; the padding row and the target column are masked
        ids = jnp.arange(num_items + 1)[None, :]
        off = (ids == 0) | (ids == tgt[:, None])
        if negative_pool is not None:
            off = off | ~jnp.zeros(num_items + 1, bool).at[negative_pool].set(True)[None, :]
        neg_logits.append(jnp.where(off, _MASKED, logits))
    elif cfg.num_negatives > 0:
        if negative_pool is None:
            neg_ids = jax.random.randint(rng_uniform, (cfg.num_negatives,), 1, num_items + 1)
        else:
            pick = jax.random.randint(rng_uniform, (cfg.num_negatives,), 0, negative_pool.shape[0])
            neg_ids = jnp.take(negative_pool, pick)
        logits = (u @ jnp.take(table, neg_ids, axis=0).T) * inv_t
        if use_logq:
            logits = logits + math.log(num_items if negative_pool is None else negative_pool.shape[0])
        neg_logits.append(jnp.where(neg_ids[None, :] == tgt[:, None], _MASKED, logits))
    if cfg.in_batch_negatives:
        if cfg.num_in_batch_negatives > 0:
            pick = jax.random.categorical(
                rng_batch, jnp.where(valid, 0.0, -jnp.inf), shape=(cfg.num_in_batch_negatives,)
            )
            cand_ids, cand_ok = tgt[pick], valid[pick]
        else:
            cand_ids, cand_ok = tgt, valid
        logits = (u @ jnp.take(table, cand_ids, axis=0).T) * inv_t
        if use_logq:
            logits = logits - jnp.take(log_q, cand_ids)[None, :]
        keep = cand_ok[None, :] & (cand_ids[None, :] != tgt[:, None])
        neg_logits.append(jnp.where(keep, logits, _MASKED))

    all_logits = jnp.concatenate([pos_logit[:, None], *neg_logits], axis=1)
    per_pos = -jax.nn.log_softmax(all_logits, axis=-1)[:, 0]
    w = valid.astype(jnp.float32)
    n = jnp.sum(w)
    denom = jnp.maximum(n, 1.0)
    loss = jnp.sum(per_pos * w) / denom
    beats_all = pos_logit > jnp.max(all_logits[:, 1:], axis=-1)
    metrics = {
        "loss": loss,
        "num_targets": n,
        "dropped_targets": num_real - n,
        "positive_logit": jnp.sum(pos_logit * w) / denom,
        "in_sample_accuracy": jnp.sum(beats_all * w) / denom,
    }
    return loss, metrics
