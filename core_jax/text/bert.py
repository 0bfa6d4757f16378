"""BERT encoder (e.g. the MiniLM sentence embedder) as Flax NNX modules.

Attributes are named like transformers' ``BertModel`` (``encoder.layer[i].attention.self.query``) so
checkpoints load through :mod:`core_jax.state_dict`. Besides the token states (usable as
cross-attention context) it gives sentence-transformers' mean-pooled, L2-normalised sentence embedding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from core_jax.nn import activation, attention, config_from_dict, dense, embed, layer_norm


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The keys of transformers' ``BertConfig`` that define the encoder (same defaults)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig: hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        try:
            activation(self.hidden_act)
        except ValueError as e:
            raise ValueError(f"BertConfig.hidden_act: {e}") from None
        if self.position_embedding_type != "absolute":
            raise ValueError(f"BertConfig.position_embedding_type={self.position_embedding_type!r}: "
                             "only 'absolute' is supported")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "BertConfig":
        return config_from_dict(cls, values, "BertConfig")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model_type": "bert"}


@flax.struct.dataclass
class BertModelOutput:
    """``hidden_states``: the embeddings then every layer's output (``hidden_states[-1]`` is
    ``last_hidden_state``); ``pooler_output``: tanh(dense([CLS])), None without a pooler."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array | None
    hidden_states: tuple[jax.Array, ...]


class BertEmbeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs, **dt):
        h = cfg.hidden_size
        self.word_embeddings = embed(cfg.vocab_size, h, ("vocab", "embed"), rngs=rngs, **dt)
        self.position_embeddings = embed(cfg.max_position_embeddings, h, (None, "embed"), rngs=rngs, **dt)
        self.token_type_embeddings = embed(cfg.type_vocab_size, h, (None, "embed"), rngs=rngs, **dt)
        self.LayerNorm = layer_norm(h, cfg.layer_norm_eps, rngs=rngs, **dt)

    def __call__(self, input_ids, token_type_ids):
        positions = self.position_embeddings(jnp.arange(input_ids.shape[-1]))[None]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + positions
        return self.LayerNorm(x)


class BertSelfAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs, **dt):
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.query = dense(h, h, ("embed", "heads"), rngs=rngs, **dt)
        self.key = dense(h, h, ("embed", "heads"), rngs=rngs, **dt)
        self.value = dense(h, h, ("embed", "heads"), rngs=rngs, **dt)

    def __call__(self, x, mask):
        return attention(self.query(x), self.key(x), self.value(x), self.num_heads, mask=mask)


class BertResidualOutput(nnx.Module):
    """dense, then LayerNorm(x + residual): BERT's ``attention.output`` and ``output`` blocks."""

    def __init__(self, d_in, cfg: BertConfig, axes, *, rngs, **dt):
        self.dense = dense(d_in, cfg.hidden_size, axes, rngs=rngs, **dt)
        self.LayerNorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs, **dt)

    def __call__(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs, **dt):
        self.self = BertSelfAttention(cfg, rngs=rngs, **dt)
        self.output = BertResidualOutput(cfg.hidden_size, cfg, ("heads", "embed"), rngs=rngs, **dt)

    def __call__(self, x, mask):
        return self.output(self.self(x, mask), x)


class BertIntermediate(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs, **dt):
        self.act = activation(cfg.hidden_act)
        self.dense = dense(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), rngs=rngs, **dt)

    def __call__(self, x):
        return self.act(self.dense(x))


class BertLayer(nnx.Module):
    """Post-norm block: attention with residual + LayerNorm, then MLP with residual + LayerNorm."""

    def __init__(self, cfg: BertConfig, *, rngs, **dt):
        self.attention = BertAttention(cfg, rngs=rngs, **dt)
        self.intermediate = BertIntermediate(cfg, rngs=rngs, **dt)
        self.output = BertResidualOutput(cfg.intermediate_size, cfg, ("mlp", "embed"), rngs=rngs, **dt)

    def __call__(self, x, mask):
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs, **dt):
        self.layer = nnx.List([BertLayer(cfg, rngs=rngs, **dt) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x, mask):
        states = [x]
        for layer in self.layer:
            x = layer(x, mask)
            states.append(x)
        return tuple(states)


class BertPooler(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs, **dt):
        self.dense = dense(cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs=rngs, **dt)

    def __call__(self, x):
        return jnp.tanh(self.dense(x[:, 0]))


class BertModel(nnx.Module):
    """BERT encoder: ``model(input_ids, attention_mask, token_type_ids) -> BertModelOutput``.

    Args:
      config: a :class:`BertConfig` or a dict with transformers' ``BertConfig`` keys.
      add_pooling_layer: keep the [CLS] pooler (checkpoints such as MiniLM ship its weights).
      dtype / param_dtype: computation and parameter dtypes.
    """

    def __init__(self, config: BertConfig | Mapping[str, Any], *, rngs: nnx.Rngs, add_pooling_layer: bool = True,
                 dtype=None, param_dtype=jnp.float32):
        self.config = config if isinstance(config, BertConfig) else BertConfig.from_dict(config)
        dt = {"dtype": dtype, "param_dtype": param_dtype}
        self.embeddings = BertEmbeddings(self.config, rngs=rngs, **dt)
        self.encoder = BertEncoder(self.config, rngs=rngs, **dt)
        self.pooler = BertPooler(self.config, rngs=rngs, **dt) if add_pooling_layer else None

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> BertModelOutput:
        cfg = self.config
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids: expected an integer array [batch, length], got {input_ids.dtype}"
                             f"{list(input_ids.shape)}")
        if input_ids.shape[1] > cfg.max_position_embeddings:
            raise ValueError(f"input_ids: length {input_ids.shape[1]} exceeds max_position_embeddings="
                             f"{cfg.max_position_embeddings}")
        for name, arr in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if arr is not None and tuple(jnp.shape(arr)) != input_ids.shape:
                raise ValueError(f"{name}: expected shape {input_ids.shape} like input_ids, got {jnp.shape(arr)}")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        mask = None if attention_mask is None else jnp.asarray(attention_mask).astype(bool)[:, None, None, :]
        states = self.encoder(self.embeddings(input_ids, token_type_ids), mask)
        pooled = self.pooler(states[-1]) if self.pooler is not None else None
        return BertModelOutput(last_hidden_state=states[-1], pooler_output=pooled, hidden_states=states)


def mean_pool(token_states: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Average of the token states over the unmasked positions: [B, L, D], [B, L] -> [B, D]."""
    weights = jnp.asarray(attention_mask).astype(token_states.dtype)[..., None]
    return (token_states * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def sentence_embedding(model: BertModel, input_ids, attention_mask) -> tuple[jax.Array, jax.Array]:
    """(token states [B, L, D], mean-pooled L2-normalised sentence embedding [B, D]) as sentence-transformers."""
    states = model(input_ids, attention_mask).last_hidden_state
    return states, l2_normalize(mean_pool(states, attention_mask))
