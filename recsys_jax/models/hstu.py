"""HSTU: Hierarchical Sequential Transduction Units ("Actions Speak Louder than Words", ICML 2024).

Each layer (no feed-forward block)::

    U, V, Q, K = split(silu(LN(x) @ W_uvqk))
    A          = silu(Q K^T + rab_pos + rab_time) / n      (causal, real keys only, no softmax)
    x          = x + W_o(dropout(U * LN(A V)))

``rab_pos`` is a learned bias per relative position ``i - j``; ``rab_time`` a learned bias per
log-bucket of the time gap ``t_i - t_j`` (see :func:`time_buckets`). ``n`` is ``config.max_seq_len``
(a constant, so outputs do not depend on how far a batch is padded). Inputs are
``sqrt(D) * item_emb + pos_emb`` with positions counted from the first real item (see
``embeddings.py``), so left and right padding give the same outputs at real positions.

The time gap for query ``i`` uses the query's own timestamp ``t_i`` (``time_bias_from="query"``, the
default: outputs stay strictly causal). generative-recommenders' research HSTU uses the *next* item's
timestamp ``t_{i+1}`` instead (the request time at the last item); ``time_bias_from="next"`` does that
(checkpoints imported with ``recsys-jax convert from-generative-recommenders`` set it): query ``i``
uses ``t_{i+1}`` while position ``i + 1`` holds a real item, and its own ``t_i`` at the last real item
(our inputs carry no separate request time; it is GR's encoder with the request time equal to the
last action's).

**Event sequences** (off by default: every field below at 0 / False gives the plain item-sequence
HSTU, with the same parameters and outputs). ``num_actions`` / ``num_surfaces`` / ``use_is_ad`` add
the event's action, surface and is-ad embeddings to its item token (:class:`EventEmbedding`: the
input is ``sqrt(D) * item_emb + pos_emb + action_emb + surface_emb (+ ad_emb)``), passed as
``model(items, ts, actions=..., surfaces=..., is_ad=...)``. ``num_scenario_labels`` > 0 adds a
:class:`~recsys_jax.models.scenario.ScenarioTower` (hidden size ``scenario_hidden_dim``, 0: D),
conditioned on the target label and, with ``num_surfaces``, the target surface:
``model.scenario(user, label, surface)`` maps the trunk's output to the scenario's user embedding.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from core_jax.nn import take_rows
from recsys_jax.models.embeddings import (
    EventEmbedding,
    ItemEmbedding,
    ItemTextConfig,
    PositionalEmbedding,
    causal_key_mask,
    check_sequence_inputs,
    l2_normalize,
)
from recsys_jax.models.scenario import ScenarioTower

# floor(log(dt) / 0.301): ~0.7 of a bucket per doubling of the gap (log base e, as in the paper's code).
TIME_BUCKET_DIVISOR = 0.301


@dataclasses.dataclass(frozen=True)
class HSTUConfig:
    embed_dim: int = 50
    num_layers: int = 2
    num_heads: int = 1
    attention_dim: int = 50  # per-head size of Q and K
    linear_dim: int = 50  # per-head size of U and V
    max_seq_len: int = 200
    dropout: float = 0.2  # on input embeddings and before W_o
    num_time_buckets: int = 128
    use_position_bias: bool = True
    use_time_bias: bool = True
    l2_normalize: bool = True
    layer_norm_eps: float = 1e-6
    time_bias_from: Literal["query", "next"] = "query"  # "query": t_i - t_j; "next": t_{i+1} - t_j (generative-recommenders)
    # causal attention in this many query blocks, each against the keys up to its end (the same outputs; 4 blocks
    # compute 10/16 of the [L, L] scores; 1: one dense [L, L] block)
    causal_blocks: int = 1
    # event sequences (0 / False: off, the plain item-sequence model): vocabulary sizes of the input features
    num_actions: int = 0
    num_surfaces: int = 0
    use_is_ad: bool = False
    # scenario tower (0: none; the unified task sets it to the number of labels) and its hidden size (0: embed_dim)
    num_scenario_labels: int = 0
    scenario_hidden_dim: int = 0

    @property
    def event_features(self) -> bool:
        return bool(self.num_actions or self.num_surfaces or self.use_is_ad)


TIME_BIAS_FROM = ("query", "next")


def time_buckets(dt: jax.Array, num_buckets: int) -> jax.Array:
    """``clip(floor(log(max(1, |dt|)) / 0.301), 0, num_buckets)`` as int32 (``dt`` in seconds)."""
    dt = jnp.maximum(jnp.abs(dt), 1).astype(jnp.float32)
    return jnp.clip(jnp.floor(jnp.log(dt) / TIME_BUCKET_DIVISOR), 0, num_buckets).astype(jnp.int32)


def next_timestamps(ts: jax.Array, mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """``ts[i + 1]`` where position ``i + 1`` is a real item (of the same segment in packed rows), else ``ts[i]``
    (``[B, L]``)."""
    shifted = jnp.concatenate([ts[:, 1:], ts[:, -1:]], axis=1)
    next_real = mask[:, 1:]
    if segment_ids is not None:
        next_real = next_real & (segment_ids[:, 1:] == segment_ids[:, :-1])
    next_real = jnp.concatenate([next_real, jnp.zeros_like(mask[:, :1])], axis=1)
    return jnp.where(next_real, shifted, ts)


def relative_position_index(length: int, max_seq_len: int) -> np.ndarray:
    """Static ``[L, L]`` index into a ``2 * max_seq_len - 1`` table: ``max_seq_len - 1 + j - i``."""
    i = np.arange(length)[:, None]
    j = np.arange(length)[None, :]
    return (max_seq_len - 1 + j - i).astype(np.int32)


def causal_blocks(length: int, blocks: int) -> list[tuple[int, int]]:
    """``[start, end)`` of ``blocks`` (at most ``length``) query blocks of nearly equal size: causal attention
    computes block ``[start, end)`` against keys ``[0, end)`` only (with 4 blocks, 10 of the 16 key blocks)."""
    edges = np.linspace(0, length, min(blocks, max(length, 1)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """Parameter-free layer norm over the last axis (as in the reference HSTU)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class HSTULayer(nnx.Module):
    def __init__(self, cfg: HSTUConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        h, dqk, dv, d = cfg.num_heads, cfg.attention_dim, cfg.linear_dim, cfg.embed_dim
        uvqk_init = nnx.with_partitioning(nnx.initializers.normal(0.02), ("embed", "mlp"))
        self.uvqk = nnx.Param(uvqk_init(rngs.params(), (d, 2 * h * dv + 2 * h * dqk), jnp.float32))
        self.out = nnx.Linear(
            h * dv,
            d,
            kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), ("mlp", "embed")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
            rngs=rngs,
        )
        bias_init = nnx.with_partitioning(nnx.initializers.normal(0.02), (None,))
        if cfg.use_position_bias:
            self.pos_bias = nnx.Param(bias_init(rngs.params(), (2 * cfg.max_seq_len - 1,), jnp.float32))
        if cfg.use_time_bias:
            self.time_bias = nnx.Param(bias_init(rngs.params(), (cfg.num_time_buckets + 1,), jnp.float32))
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def attention_bias(self, rel_pos: np.ndarray, buckets: jax.Array | None) -> jax.Array:
        """``[B or 1, L, L]`` additive bias from relative positions and time buckets."""
        if self.cfg.use_position_bias and self.cfg.use_time_bias and buckets is not None:
            # one lookup into the [positions x buckets] table of sums: its gradient is one segment_sum, where two
            # lookups cost two gathers, a scatter and a [B, L, L] -> [L, L] batch reduction (XLA:CPU's is slow)
            pos, tb = self.pos_bias[...], self.time_bias[...]
            index = jnp.asarray(rel_pos, jnp.int32)[None] * tb.shape[0] + buckets
            return take_rows((pos[:, None] + tb[None, :]).reshape(-1), index)
        bias = jnp.zeros((1,) + rel_pos.shape, jnp.float32)
        if self.cfg.use_position_bias:
            bias = bias + take_rows(self.pos_bias[...], jnp.asarray(rel_pos))[None]
        if self.cfg.use_time_bias and buckets is not None:
            bias = bias + take_rows(self.time_bias[...], buckets)
        return bias

    def __call__(
        self,
        x: jax.Array,
        attn_mask: jax.Array,
        rel_pos: np.ndarray,
        buckets: jax.Array | None,
        *,
        deterministic: bool,
    ) -> jax.Array:
        cfg = self.cfg
        b, length, _ = x.shape
        h, dqk, dv = cfg.num_heads, cfg.attention_dim, cfg.linear_dim
        proj = jax.nn.silu(_layer_norm(x, cfg.layer_norm_eps) @ self.uvqk[...])
        u, v, q, k = jnp.split(proj, [h * dv, 2 * h * dv, 2 * h * dv + h * dqk], axis=-1)
        q = q.reshape(b, length, h, dqk)
        k = k.reshape(b, length, h, dqk)
        v = v.reshape(b, length, h, dv)
        parts = []
        for start, end in causal_blocks(length, cfg.causal_blocks):  # queries [start, end) see keys [0, end)
            scores = jnp.einsum("bihd,bjhd->bhij", q[:, start:end], k[:, :end])
            block_buckets = None if buckets is None else buckets[:, start:end, :end]
            scores = scores + self.attention_bias(rel_pos[start:end, :end], block_buckets)[:, None]
            weights = jax.nn.silu(scores) / cfg.max_seq_len
            weights = jnp.where(attn_mask[:, None, start:end, :end], weights, 0.0)
            parts.append(jnp.einsum("bhij,bjhd->bihd", weights, v[:, :end]))
        attn = jnp.concatenate(parts, axis=1).reshape(b, length, h * dv)
        gated = u * _layer_norm(attn, cfg.layer_norm_eps)
        return x + self.out(self.dropout(gated, deterministic=deterministic))


class HSTU(nnx.Module):
    """``model(item_ids, timestamps, *, deterministic) -> [B, L, D]`` causal user embeddings (``[B, L, D + T]``
    at inference with ``item_text.profile_weight``)."""

    def __init__(self, cfg: HSTUConfig, num_items: int, *, rngs: nnx.Rngs, item_text: ItemTextConfig | None = None,
                 text_table=None):
        """``item_text`` / ``text_table``: the item's text in its representation (:class:`ItemEmbedding`)."""
        if cfg.embed_dim < 1 or cfg.num_layers < 0 or cfg.num_heads < 1 or cfg.max_seq_len < 1:
            raise ValueError(f"invalid HSTUConfig {cfg}: sizes must be positive")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"HSTUConfig.dropout must be in [0, 1), got {cfg.dropout}")
        if cfg.causal_blocks < 1:
            raise ValueError(f"HSTUConfig.causal_blocks must be >= 1 (1: one dense block), got {cfg.causal_blocks}")
        if cfg.time_bias_from not in TIME_BIAS_FROM:
            raise ValueError(f"HSTUConfig.time_bias_from must be one of {TIME_BIAS_FROM}, got {cfg.time_bias_from!r}")
        if min(cfg.num_actions, cfg.num_surfaces, cfg.num_scenario_labels, cfg.scenario_hidden_dim) < 0:
            raise ValueError(f"HSTUConfig num_actions, num_surfaces, num_scenario_labels and scenario_hidden_dim "
                             f"must be >= 0 (0: off), got {cfg}")
        self.cfg = cfg
        self.num_items = num_items
        self.profile = (item_text.profile_weight, item_text.profile_len) \
            if item_text is not None and item_text.profile_weight else None
        if self.profile and cfg.num_scenario_labels:
            raise ValueError("item_text.profile_weight (a text-profile score at inference) is for the item-sequence "
                             "HSTU, not with a scenario tower (num_scenario_labels > 0)")
        self.items = ItemEmbedding(num_items, cfg.embed_dim, rngs=rngs, text=item_text, text_table=text_table)
        self.positions = PositionalEmbedding(cfg.max_seq_len, cfg.embed_dim, rngs=rngs)
        self.input_dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.layers = nnx.List([HSTULayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        if cfg.event_features:  # only then: a plain config keeps its parameter tree (and checkpoints)
            self.events = EventEmbedding(cfg.embed_dim, num_actions=cfg.num_actions, num_surfaces=cfg.num_surfaces,
                                         use_is_ad=cfg.use_is_ad, rngs=rngs)
        if cfg.num_scenario_labels:
            self.scenario_tower = ScenarioTower(cfg.embed_dim, cfg.scenario_hidden_dim or cfg.embed_dim,
                                                cfg.num_scenario_labels, cfg.num_surfaces,
                                                normalize=cfg.l2_normalize, rngs=rngs)

    def item_embeddings(self, deterministic: bool = True) -> jax.Array:
        """``[N + 1, D]`` output-space item embeddings (row 0 zero), normalised like the users. With
        ``item_text.profile_weight`` at inference: ``[N + 1, D + T]``, the unit text embeddings appended (the
        users get ``w x`` their text profile appended: see :meth:`__call__`)."""
        table = self.items.table(self.cfg.l2_normalize, deterministic)
        if self.profile and deterministic:
            return jnp.concatenate([table, self.items.unit_text()], axis=-1)
        return table

    def scenario(self, user: jax.Array, label: jax.Array, surface: jax.Array | None = None) -> jax.Array:
        """The scenario's user embedding from the trunk output ``user [..., D]`` (label / surface codes
        ``[...]`` or scalars broadcast to it); zero where ``user`` is (padding)."""
        if not self.cfg.num_scenario_labels:
            raise ValueError("this model has no scenario tower (HSTUConfig.num_scenario_labels=0)")
        lead = user.shape[:-1]
        label = jnp.broadcast_to(jnp.asarray(label, jnp.int32), lead)
        surface = None if surface is None else jnp.broadcast_to(jnp.asarray(surface, jnp.int32), lead)
        out = self.scenario_tower(user, label, surface)
        return jnp.where(jnp.any(user != 0, axis=-1, keepdims=True), out, 0.0)

    def __call__(
        self, item_ids: jax.Array, timestamps: jax.Array | None, *, deterministic: bool,
        actions: jax.Array | None = None, surfaces: jax.Array | None = None, is_ad: jax.Array | None = None,
        segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
    ) -> jax.Array:
        """``timestamps`` (seconds, int32 range: differences are taken in int32) may be None only
        when ``use_time_bias`` is off. ``actions`` / ``surfaces`` / ``is_ad`` (``[B, L]``, aligned
        with ``item_ids``): the event features the config turns on (ignored otherwise).
        ``segment_ids`` / ``positions`` (``[B, L]``, both or neither): packed rows (:mod:`core_jax.packing`),
        several sequences a row; each output is the one its sequence alone would give."""
        check_sequence_inputs(item_ids, timestamps, self.cfg.max_seq_len)
        if (segment_ids is None) != (positions is None):
            raise ValueError("HSTU: packed rows need both segment_ids and positions (core_jax.packing)")
        mask = item_ids > 0
        x = self.embed(item_ids, deterministic=deterministic, actions=actions, surfaces=surfaces, is_ad=is_ad,
                       positions=positions)
        out = self.encode(x, mask, timestamps, deterministic=deterministic, segment_ids=segment_ids)
        if self.profile and deterministic:  # late fusion with the text profile: [u; w p] . [e; t] = u.e + w p.t
            weight, length = self.profile
            out = jnp.concatenate([out, weight * self.items.text_profile(item_ids, length)], axis=-1)
        return out

    def embed(self, item_ids: jax.Array, *, deterministic: bool, actions: jax.Array | None = None,
              surfaces: jax.Array | None = None, is_ad: jax.Array | None = None,
              positions: jax.Array | None = None) -> jax.Array:
        """``[B, L, D]`` input tokens (item, position and event embeddings, dropout; zero at padding)."""
        cfg = self.cfg
        mask = item_ids > 0
        x = self.items(item_ids, deterministic) * math.sqrt(cfg.embed_dim) + self.positions(mask, positions)
        if cfg.event_features:
            x = x + self.events(item_ids.shape, actions, surfaces, is_ad)
        return self.input_dropout(x, deterministic=deterministic) * mask[..., None]

    def encode(self, x: jax.Array, mask: jax.Array, timestamps: jax.Array | None, *,
               deterministic: bool, segment_ids: jax.Array | None = None) -> jax.Array:
        """The HSTU layers over input tokens ``x [B, L, D]`` (real where ``mask``; ``segment_ids``: packed rows):
        ``[B, L, D]`` outputs. (:class:`~recsys_jax.models.long_short.LongShortHSTU` prepends a long-term prefix
        token here.)"""
        cfg = self.cfg
        if x.shape[1] > cfg.max_seq_len:
            raise ValueError(f"sequence length {x.shape[1]} exceeds config.max_seq_len={cfg.max_seq_len}")
        attn_mask = causal_key_mask(mask, segment_ids)
        rel_pos = relative_position_index(x.shape[1], cfg.max_seq_len)
        buckets = None
        if cfg.use_time_bias:
            if timestamps is None:
                raise ValueError("HSTU with use_time_bias=True needs timestamps [B, L] (unix seconds)")
            ts = jnp.asarray(timestamps)
            query_ts = next_timestamps(ts, mask, segment_ids) if cfg.time_bias_from == "next" else ts
            buckets = time_buckets(query_ts[:, :, None] - ts[:, None, :], cfg.num_time_buckets)
        for layer in self.layers:
            x = layer(x, attn_mask, rel_pos, buckets, deterministic=deterministic)
        x = x * mask[..., None]
        return l2_normalize(x) if cfg.l2_normalize else x
