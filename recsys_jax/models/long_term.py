"""Long-term user encoder over a user's whole history (thousands of events), one vector per user.

``LongTermEncoder(items [B, L], timestamps [B, L], as_of [B]) -> [B, D]`` (L2-normalised; zero for an empty
history). ``items`` are left-padded (0 = pad), oldest first, and hold only events strictly before
``as_of`` (the caller's job: :func:`recsys_jax.data.long_history.history_before`); ``as_of`` is the time
the embedding is computed for (the daily batch's cutoff), used for each event's age.

Design (``encoder="pooled"``, the default): PinnerFormer-style (Pancha et al., KDD 2022) -- a user
embedding recomputed in batch and stored per user, trained with a *dense all-action* loss (the
embedding at cutoff t must retrieve every action in the next window, not only the next one:
``recsys_jax.train.longshort``). Each event is ``item_emb + age_emb[log-bucket(as_of - t_j)]``;
``num_heads`` learned queries attention-pool the events (softmax over the real events) and their
concatenation with the mean goes through an MLP. Cost and memory are linear in L (no L x L attention),
so a 4,096-event history at batch 64 is a few [64, 4096, D] activations: cheap enough to recompute
every user's embedding daily, which is what a stored table needs. PinnerFormer uses a causal
transformer over the (capped) sequence; at 4k+ events the L^2 attention dominates on CPU, and the
long-term vector is a slowly-moving summary for which order inside a history matters little: recency
enters through the age buckets.

Alternative (``encoder="chunk_hstu"``, measured beside it in BENCHMARKS.md): the compressed long
sequence -- events mean-pooled into chunks of ``chunk`` consecutive events (aligned at the most recent
event), then HSTU layers (``recsys_jax.models.hstu.HSTULayer``) over the ``L / chunk`` chunk tokens,
the last chunk's output is the user vector.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from recsys_jax.models.embeddings import causal_key_mask, l2_normalize
from recsys_jax.models.hstu import HSTUConfig, HSTULayer, _layer_norm, relative_position_index, time_buckets

ENCODERS = ("pooled", "chunk_hstu")


@dataclasses.dataclass(frozen=True)
class LongTermConfig:
    encoder: Literal["pooled", "chunk_hstu"] = "pooled"
    embed_dim: int = 64
    max_len: int = 4096  # longest history read (most recent events kept)
    num_heads: int = 4  # pooled: attention-pooling queries
    hidden_dim: int = 256  # pooled: MLP hidden size
    chunk: int = 32  # chunk_hstu: events per chunk token
    num_layers: int = 2  # chunk_hstu: HSTU layers over the chunks
    num_time_buckets: int = 64  # age buckets (log of seconds, as HSTU's time bias)
    dropout: float = 0.1
    # events right before the cutoff left out of the long input (e.g. the short model's window, so that the two
    # read disjoint events); applied wherever the input is built (training, the stored table)
    skip_recent: int = 0

    def validate(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"LongTermConfig.encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if min(self.embed_dim, self.max_len, self.num_heads, self.hidden_dim, self.chunk) < 1:
            raise ValueError(f"LongTermConfig sizes must be positive, got {self}")
        if self.skip_recent < 0:
            raise ValueError(f"LongTermConfig.skip_recent must be >= 0, got {self.skip_recent}")
        if self.encoder == "chunk_hstu" and self.max_len % self.chunk:
            raise ValueError(f"LongTermConfig.max_len ({self.max_len}) must be a multiple of chunk ({self.chunk})")


class LongTermEncoder(nnx.Module):
    """See the module doc. ``item_embeddings()``: its own ``[N + 1, D]`` item table (normalised)."""

    def __init__(self, cfg: LongTermConfig, num_items: int, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg, self.num_items = cfg, num_items
        d = cfg.embed_dim
        init = nnx.initializers.normal(0.02)
        self.item_table = nnx.Param(init(rngs.params(), (num_items + 1, d), jnp.float32))
        self.age = nnx.Param(init(rngs.params(), (cfg.num_time_buckets + 1, d), jnp.float32))
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        if cfg.encoder == "pooled":
            self.queries = nnx.Param(init(rngs.params(), (cfg.num_heads, d), jnp.float32))
            self.mlp_in = nnx.Linear((cfg.num_heads + 1) * d, cfg.hidden_dim, rngs=rngs)
            self.mlp_out = nnx.Linear(cfg.hidden_dim, d, rngs=rngs)
        else:
            n_chunks = cfg.max_len // cfg.chunk
            self.chunk_cfg = HSTUConfig(embed_dim=d, num_layers=cfg.num_layers, num_heads=1, attention_dim=d,
                                        linear_dim=d, max_seq_len=n_chunks, dropout=cfg.dropout,
                                        use_time_bias=False, l2_normalize=True)
            self.layers = nnx.List([HSTULayer(self.chunk_cfg, rngs=rngs) for _ in range(cfg.num_layers)])
            self.out = nnx.Linear(d, d, rngs=rngs)

    def item_embeddings(self, deterministic: bool = True) -> jax.Array:
        return l2_normalize(self.item_table[...]).at[0].set(0.0)

    def __call__(self, items: jax.Array, timestamps: jax.Array, as_of: jax.Array, *,
                 deterministic: bool) -> jax.Array:
        cfg = self.cfg
        if items.ndim != 2 or timestamps.shape != items.shape or as_of.shape != items.shape[:1]:
            raise ValueError(f"LongTermEncoder expects items / timestamps [B, L] and as_of [B], got "
                             f"{items.shape}, {timestamps.shape}, {as_of.shape}")
        if items.shape[1] > cfg.max_len:
            raise ValueError(f"history length {items.shape[1]} exceeds LongTermConfig.max_len={cfg.max_len}")
        mask = items > 0
        age = time_buckets(as_of[:, None] - timestamps, cfg.num_time_buckets)
        x = jnp.take(self.item_table[...], items, axis=0) + jnp.take(self.age[...], age, axis=0)
        x = self.dropout(x, deterministic=deterministic) * mask[..., None]
        user = self._pooled(x, mask) if cfg.encoder == "pooled" else self._chunks(x, mask, deterministic)
        return l2_normalize(user) * jnp.any(mask, axis=1, keepdims=True)

    def _pooled(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        d = self.cfg.embed_dim
        scores = jnp.einsum("bld,hd->bhl", _layer_norm(x, 1e-6), self.queries[...]) / math.sqrt(d)
        scores = jnp.where(mask[:, None, :], scores, -1e9)
        weights = jax.nn.softmax(scores, axis=-1) * mask[:, None, :]
        heads = jnp.einsum("bhl,bld->bhd", weights, x).reshape(x.shape[0], -1)
        mean = jnp.sum(x, axis=1) / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1)
        h = jax.nn.gelu(self.mlp_in(jnp.concatenate([heads, mean], axis=-1)))
        return mean + self.mlp_out(h)

    def _chunks(self, x: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
        b, length, d = x.shape
        c = self.cfg.chunk
        pad = (-length) % c  # left-pad to whole chunks (chunks align at the most recent event)
        x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0)))
        m = jnp.pad(mask, ((0, 0), (pad, 0)))
        n = x.shape[1] // c
        counts = jnp.sum(m.reshape(b, n, c), axis=2)
        tokens = jnp.sum(x.reshape(b, n, c, d), axis=2) / jnp.maximum(counts, 1)[..., None]
        cmask = counts > 0
        rel = relative_position_index(n, self.chunk_cfg.max_seq_len)
        attn = causal_key_mask(cmask)
        for layer in self.layers:
            tokens = layer(tokens, attn, rel, None, deterministic=deterministic)
        return self.out(tokens[:, -1])  # left padding: the last chunk holds the most recent events
