"""Short-term HSTU over the recent events, conditioned on a stored long-term user embedding.

``LongShortHSTU(item_ids [B, L], timestamps [B, L], long [B, Dl] | None, *, deterministic) -> [B, L, D]``.
``long`` is the user's row of the long-term table (:class:`~recsys_jax.models.long_term.LongTermEncoder`,
computed in batch from events strictly before the query time); zero rows mean "no long-term history".

``fusion``:

* ``"gated"`` (default): ``u = normalize(s + g * P l)`` with ``s`` the HSTU output at each position,
  ``P`` a linear projection of the long embedding and ``g = sigmoid(W [s; P l])`` a per-dimension gate;
* ``"prefix"``: ``P l`` is a token placed before the sequence, every position attends to it through
  the HSTU layers (``hstu.max_seq_len`` must be at least the short window + 1);
* ``"score"`` (late fusion): the long model's item scores are kept. The output is the concatenation
  ``[s; w * l]`` with ``s`` the (unit) HSTU output and ``l`` the (unit) long embedding, and
  ``item_embeddings()`` is ``[e; e_long]``: the HSTU's (unit) item table beside the long encoder's,
  a frozen copy (:meth:`set_long_items`, no gradient). So ``<u, item> = s . e + w * l . e_long``: the
  short model's score plus a learned scalar ``w`` (init ``score_weight``) times the long model's score,
  and the HSTU trained through these logits learns what the long model misses. The loss must not
  L2-normalise the concatenation (``recsys_jax.train.longshort`` turns ``l2_normalize`` off for this
  mode); any dot-product retrieval (``Retriever``, the future-window eval) serves it unchanged.
* ``"none"``: the plain HSTU (the short-only baseline; ``long`` is ignored).

The HSTU inside is :class:`~recsys_jax.models.hstu.HSTU` unchanged (``model.hstu``), so existing HSTU
configs and checkpoints are not affected: the conditioning is a separate, opt-in model.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from recsys_jax.models.embeddings import l2_normalize
from recsys_jax.models.hstu import HSTU, HSTUConfig

FUSIONS = ("gated", "prefix", "score", "none")


@dataclasses.dataclass(frozen=True)
class LongShortConfig:
    fusion: Literal["gated", "prefix", "score", "none"] = "gated"
    long_dim: int = 64  # size of the stored long-term embedding
    score_weight: float = 1.0  # "score": the initial weight w of the long model's scores (learned)


class LongShortHSTU(nnx.Module):
    def __init__(self, hstu: HSTUConfig, cfg: LongShortConfig, num_items: int, *, rngs: nnx.Rngs):
        if cfg.fusion not in FUSIONS:
            raise ValueError(f"LongShortConfig.fusion must be one of {FUSIONS}, got {cfg.fusion!r}")
        self.fusion, self.ls_cfg = cfg.fusion, cfg
        # "score": each part is a unit vector (cosine scores at the loss temperature), the concatenation is not
        inner = {"gated": False, "score": True}.get(cfg.fusion, hstu.l2_normalize)
        self.hstu = HSTU(dataclasses.replace(hstu, l2_normalize=inner), num_items, rngs=rngs)
        self.cfg, self.num_items = self.hstu.cfg, num_items
        self.normalize = hstu.l2_normalize or cfg.fusion == "score"  # the item table's rows
        d = hstu.embed_dim
        if cfg.fusion == "score":
            self.long_weight = nnx.Param(jnp.full((1,), cfg.score_weight, jnp.float32))
            self.long_items = nnx.Param(jnp.zeros((num_items + 1, cfg.long_dim), jnp.float32))  # frozen copy
        elif cfg.fusion != "none":
            self.project = nnx.Linear(cfg.long_dim, d, rngs=rngs)
        if cfg.fusion == "gated":
            self.gate = nnx.Linear(2 * d, d, rngs=rngs)

    def item_embeddings(self, deterministic: bool = True) -> jax.Array:
        table = self.hstu.items.table(self.normalize, deterministic)
        if self.fusion == "score":  # [N + 1, D + Dl]; the long part is frozen
            return jnp.concatenate([table, jax.lax.stop_gradient(self.long_items[...])], axis=1)
        return table

    def set_long_items(self, table: jax.Array) -> None:
        """``"score"``: store the long encoder's item table (``LongTermEncoder.item_embeddings()``, ``[N + 1, Dl]``)."""
        if self.fusion != "score":
            raise ValueError(f"set_long_items is for fusion 'score', this model's is {self.fusion!r}")
        if table.shape != self.long_items.shape:
            raise ValueError(f"long item table: expected {self.long_items.shape}, got {table.shape}")
        self.long_items[...] = jnp.asarray(table, jnp.float32)

    def __call__(self, item_ids: jax.Array, timestamps: jax.Array | None, long: jax.Array | None = None, *,
                 deterministic: bool) -> jax.Array:
        if self.fusion == "none":
            return self.hstu(item_ids, timestamps, deterministic=deterministic)
        if long is None or long.shape != (item_ids.shape[0], self.ls_cfg.long_dim):
            raise ValueError(f"fusion {self.fusion!r} needs the long-term embedding long [B, {self.ls_cfg.long_dim}], "
                             f"got {None if long is None else long.shape}")
        mask = item_ids > 0
        if self.fusion == "score":
            s = self.hstu(item_ids, timestamps, deterministic=deterministic)  # unit rows, zero at padding
            lw = jnp.broadcast_to((self.long_weight[...] * long)[:, None, :], s.shape[:2] + long.shape[-1:])
            return jnp.concatenate([s, lw * mask[..., None]], axis=-1)
        p = self.project(long)  # [B, D]
        if self.fusion == "gated":
            s = self.hstu(item_ids, timestamps, deterministic=deterministic)
            p = jnp.broadcast_to(p[:, None, :], s.shape)
            g = jax.nn.sigmoid(self.gate(jnp.concatenate([s, p], axis=-1)))
            u = (s + g * p) * mask[..., None]
            return l2_normalize(u) if self.normalize else u
        # prefix token: index 0, before the (left-padded) window; its time is the window's first event's
        x = self.hstu.embed(item_ids, deterministic=deterministic)
        x = jnp.concatenate([p[:, None, :], x], axis=1)
        m = jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1)
        ts = None
        if timestamps is not None:
            first = jnp.take_along_axis(timestamps, jnp.argmax(mask, axis=1)[:, None], axis=1)
            ts = jnp.concatenate([first, timestamps], axis=1)
        return self.hstu.encode(x, m, ts, deterministic=deterministic)[:, 1:]
