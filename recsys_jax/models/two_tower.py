"""Two-tower baseline: the user tower pools the history, the item tower is the ID embedding table.

User embedding at position ``i`` = ``pooled + MLP(LN(pooled))`` where ``pooled`` is the mean of the
real items' embeddings at positions ``<= i`` (a cumulative masked mean: causal, and the same for
left or right padding). Timestamps are accepted for the shared interface and ignored.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from recsys_jax.models.embeddings import ItemEmbedding, ItemTextConfig, check_sequence_inputs, l2_normalize


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
    embed_dim: int = 50
    hidden_dims: tuple[int, ...] = (128,)
    max_seq_len: int = 200
    dropout: float = 0.2
    l2_normalize: bool = True
    layer_norm_eps: float = 1e-6


class TwoTower(nnx.Module):
    """``model(item_ids, timestamps, *, deterministic) -> [B, L, D]`` causal user embeddings."""

    def __init__(self, cfg: TwoTowerConfig, num_items: int, *, rngs: nnx.Rngs, item_text: ItemTextConfig | None = None,
                 text_table=None):
        """``item_text`` / ``text_table``: the item's text in its representation (:class:`ItemEmbedding`)."""
        if not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"TwoTowerConfig.dropout must be in [0, 1), got {cfg.dropout}")
        if any(h < 1 for h in cfg.hidden_dims):
            raise ValueError(f"TwoTowerConfig.hidden_dims must be positive, got {cfg.hidden_dims}")
        self.cfg = cfg
        self.num_items = num_items
        self.items = ItemEmbedding(num_items, cfg.embed_dim, rngs=rngs, text=item_text, text_table=text_table)
        self.norm = nnx.LayerNorm(
            cfg.embed_dim,
            epsilon=cfg.layer_norm_eps,
            scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)),
            rngs=rngs,
        )
        dims = (cfg.embed_dim, *cfg.hidden_dims, cfg.embed_dim)
        layers = []
        for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
            axes = ("embed", "mlp") if i == 0 else (("mlp", "embed") if i == len(dims) - 2 else ("mlp", None))
            layers.append(
                nnx.Linear(
                    din,
                    dout,
                    kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), axes),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
                    rngs=rngs,
                )
            )
        self.mlp = nnx.List(layers)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def item_embeddings(self, deterministic: bool = True) -> jax.Array:
        """``[N + 1, D]`` output-space item embeddings (row 0 zero), normalised like the users."""
        return self.items.table(self.cfg.l2_normalize, deterministic)

    def __call__(self, item_ids: jax.Array, timestamps: jax.Array | None = None, *, deterministic: bool) -> jax.Array:
        cfg = self.cfg
        check_sequence_inputs(item_ids, timestamps, cfg.max_seq_len)
        mask = (item_ids > 0)[..., None]
        emb = self.dropout(self.items(item_ids, deterministic), deterministic=deterministic)
        counts = jnp.cumsum(mask.astype(emb.dtype), axis=1)
        pooled = jnp.cumsum(emb * mask, axis=1) / jnp.maximum(counts, 1.0)
        h = self.norm(pooled)
        for i, layer in enumerate(self.mlp):
            h = layer(h)
            if i < len(self.mlp) - 1:
                h = self.dropout(jax.nn.gelu(h), deterministic=deterministic)
        x = (pooled + h) * mask
        return l2_normalize(x) if cfg.l2_normalize else x
