"""Multi-label next-event loss: one sampled softmax per label over the label's candidate pool, with logQ.

For label ``l`` (see :mod:`recsys_jax.data.event_examples`) the positions with ``label_mask[..., l]``
predict their next event's item ``t`` with the user embedding of the label's scenario ``u`` (the
scenario tower's output for ``(l, target surface)``). Candidates are the positive and
``num_negatives`` items drawn (one draw per label, shared by the batch) from the label's sampling
distribution ``q_l`` over its POOL (ads-only for ad labels, organic or all items otherwise; items
outside the pool are never drawn): ``sampler="uniform"`` (``q_l`` uniform over the pool) or
``"popularity"`` (``q_l`` proportional to ``(count + 1) ** popularity_power``, ``count`` the item's
training targets of that label). With ``logq_correction`` every logit is ``<u, e> / T - log q_l(item)``
(the sampled softmax of Jean et al. 2015 / Yi et al. 2019: an unbiased estimate of the full softmax
over the pool); a negative equal to the position's own target is masked out. ``num_negatives = 0``
scores every pool item (the exact softmax over the pool; no correction needed).

The loss: ``sum_l w_l * mean_l`` (``normalize="label"``: each label's mean over its own positions, so
a rare label such as conversions is not drowned by engagement, and ``w_l`` sets the balance) or
``sum_l w_l * sum_l(ce) / sum_l w_l * n_l`` (``normalize="event"``: every trained (position, label)
counts once, times its label's weight). A position contributes to exactly the labels it has.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from recsys_jax.models.embeddings import l2_normalize

_MASKED = -1e9
OUTSIDE_POOL = -1e9  # log q of an item outside a label's pool (never drawn)
SAMPLERS = ("uniform", "popularity")
NORMALIZE = ("label", "event")


@dataclasses.dataclass(frozen=True)
class MultiLabelLossConfig:
    num_negatives: int = 128  # per label, drawn from its pool; 0: every pool item (exact softmax)
    sampler: Literal["uniform", "popularity"] = "popularity"
    popularity_power: float = 1.0  # q ~ (count + 1) ** power with the popularity sampler
    logq_correction: bool = True
    normalize: Literal["label", "event"] = "label"

    def validate(self) -> None:
        if self.num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0 (0: every pool item), got {self.num_negatives}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r}: expected one of {list(SAMPLERS)}")
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize {self.normalize!r}: expected one of {list(NORMALIZE)}")
        if self.popularity_power < 0:
            raise ValueError(f"popularity_power must be >= 0, got {self.popularity_power}")


def label_log_q(pool: np.ndarray, counts: np.ndarray | None, cfg: MultiLabelLossConfig) -> np.ndarray:
    """``[num_labels, N + 1]`` float32 log sampling probabilities over each label's pool
    (:data:`OUTSIDE_POOL` elsewhere, and for padding row 0)."""
    pool = np.asarray(pool, bool)
    if cfg.sampler == "popularity":
        if counts is None or np.shape(counts) != pool.shape:
            raise ValueError(f"the popularity sampler needs per-label target counts of shape {pool.shape}")
        w = (np.asarray(counts, np.float64) + 1.0) ** cfg.popularity_power
    else:
        w = np.ones(pool.shape, np.float64)
    w = np.where(pool, w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    if (total <= 0).any():
        raise ValueError("every label needs a non-empty candidate pool")
    with np.errstate(divide="ignore"):
        out = np.where(pool, np.log(w / total), OUTSIDE_POOL)
    return out.astype(np.float32)


def negative_cdf(log_q: np.ndarray) -> np.ndarray:
    """``[num_labels, N + 1]`` float32 cumulative sampling probabilities of each label (:func:`label_log_q`), the
    table :func:`sample_negatives` draws from (computed once, in float64, outside the training step)."""
    return np.cumsum(np.exp(np.asarray(log_q, np.float64)), axis=-1).astype(np.float32)


def sample_negatives(rng: jax.Array, cdf: jax.Array, num_negatives: int) -> jax.Array:
    """``[num_labels, num_negatives]`` item ids, row ``l`` drawn i.i.d. from the distribution whose cumulative
    probabilities are ``cdf[l]`` (:func:`negative_cdf`), by inverting it: ``O(K log N)`` per label
    (``jax.random.categorical`` over ``log q`` draws a Gumbel per item and sample, ``O(K N)``: that alone took a
    whole training step with a 68k-item catalog)."""
    cdf = jnp.asarray(cdf, jnp.float32)
    total = cdf[:, -1:]
    # u * total may round up to the total: kept below it, the first index whose cdf exceeds u is a pool item
    u = jnp.minimum(jax.random.uniform(rng, (cdf.shape[0], num_negatives)) * total, total * (1.0 - 1e-6))
    return jax.vmap(lambda c, x: jnp.searchsorted(c, x, side="right"))(cdf, u).astype(jnp.int32)


def multi_label_loss(user: jax.Array, target_ids: jax.Array, label_mask: jax.Array, item_table: jax.Array,
                     negatives: jax.Array | None, log_q: jax.Array, weights, cfg: MultiLabelLossConfig, *,
                     temperature: float, normalize_embeddings: bool = True, names=None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss (module docstring) and metrics.

    Args:
      user: ``[..., num_labels, D]`` each position's user embedding for each label's scenario.
      target_ids: ``[...]`` the next event's item (0: none).
      label_mask: ``[..., num_labels]`` which labels each position trains.
      item_table: ``[N + 1, D]``.
      negatives: ``[num_labels, K]`` ids (:func:`sample_negatives`); None with ``num_negatives=0``.
      log_q: ``[num_labels, N + 1]`` (:func:`label_log_q`); its pools also define the exact softmax.
      weights: ``[num_labels]`` label weights.
    """
    cfg.validate()
    num_labels, d = user.shape[-2], user.shape[-1]
    if label_mask.shape != user.shape[:-1] or target_ids.shape != user.shape[:-2]:
        raise ValueError(f"shapes disagree: user {user.shape} needs target_ids {user.shape[:-2]} and label_mask "
                         f"{user.shape[:-1]}, got {target_ids.shape} and {label_mask.shape}")
    if log_q.shape != (num_labels, item_table.shape[0]):
        raise ValueError(f"log_q must be [num_labels={num_labels}, N + 1={item_table.shape[0]}], got {log_q.shape}")
    if (negatives is None) != (cfg.num_negatives == 0):
        raise ValueError("pass negatives exactly when num_negatives > 0")
    names = names or [str(i) for i in range(num_labels)]
    weights = jnp.asarray(weights, jnp.float32)
    table = l2_normalize(item_table) if normalize_embeddings else item_table
    u_all = user.reshape(-1, num_labels, d).astype(jnp.float32)
    if normalize_embeddings:
        u_all = l2_normalize(u_all)
    tgt = target_ids.reshape(-1).astype(jnp.int32)
    masks = label_mask.reshape(-1, num_labels).astype(bool) & (tgt > 0)[:, None]
    inv_t = 1.0 / temperature
    sums, counts, metrics = [], [], {}
    for l in range(num_labels):
        u, valid, lq = u_all[:, l], masks[:, l], log_q[l]
        corr = cfg.logq_correction and cfg.num_negatives > 0
        pos = jnp.sum(u * jnp.take(table, tgt, axis=0), axis=-1) * inv_t
        if corr:
            pos = pos - jnp.take(lq, tgt)
        if cfg.num_negatives > 0:
            ids = negatives[l]
            neg = (u @ jnp.take(table, ids, axis=0).T) * inv_t
            if corr:
                neg = neg - jnp.take(lq, ids)[None, :]
            neg = jnp.where(ids[None, :] == tgt[:, None], _MASKED, neg)
        else:  # every pool item but the target
            ids = jnp.arange(table.shape[0])[None, :]
            neg = jnp.where((lq[None, :] > OUTSIDE_POOL / 2) & (ids != tgt[:, None]), (u @ table.T) * inv_t, _MASKED)
        ce = jax.nn.logsumexp(jnp.concatenate([pos[:, None], neg], axis=1), axis=1) - pos
        w = valid.astype(jnp.float32)
        s, n = jnp.sum(ce * w), jnp.sum(w)
        sums.append(s)
        counts.append(n)
        metrics[f"loss_{names[l]}"] = s / jnp.maximum(n, 1.0)
        metrics[f"targets_{names[l]}"] = n
    sums, counts = jnp.stack(sums), jnp.stack(counts)
    if cfg.normalize == "label":
        loss = jnp.sum(weights * sums / jnp.maximum(counts, 1.0))
    else:
        loss = jnp.sum(weights * sums) / jnp.maximum(jnp.sum(weights * counts), 1e-9)
    metrics["loss"] = loss
    return loss, metrics
