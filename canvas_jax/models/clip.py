"""CLIP text encoder (SD's text encoder, SDXL's two) as Flax NNX modules.

Attributes are named like transformers' ``CLIPTextModel`` (``text_model.encoder.layers[i].self_attn.q_proj``)
so that :mod:`core_jax.state_dict` maps them mechanically to checkpoint keys.
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
class CLIPTextConfig:
    """The keys of transformers' ``CLIPTextConfig`` that define the network (same defaults)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 49406
    eos_token_id: int = 49407

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"CLIPTextConfig: hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        try:
            activation(self.hidden_act)
        except ValueError as e:
            raise ValueError(f"CLIPTextConfig.hidden_act: {e}") from None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CLIPTextConfig":
        """From a ``CLIPTextConfig`` dict, or a full ``CLIPConfig`` dict (its ``text_config`` is used)."""
        if isinstance(values, Mapping) and isinstance(values.get("text_config"), Mapping):
            values = {"projection_dim": values.get("projection_dim"), **values["text_config"]}
            values = {k: v for k, v in values.items() if v is not None}
        return config_from_dict(cls, values, "CLIPTextConfig")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model_type": "clip_text_model"}


@flax.struct.dataclass
class CLIPTextOutput:
    """``hidden_states`` holds the embeddings then every layer's output (before the final layer norm):
    ``hidden_states[-2]`` is the penultimate layer SDXL conditions on."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array
    hidden_states: tuple[jax.Array, ...]
    text_embeds: jax.Array | None = None


class CLIPTextEmbeddings(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, *, rngs, **dt):
        self.token_embedding = embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), rngs=rngs, **dt)
        self.position_embedding = embed(cfg.max_position_embeddings, cfg.hidden_size, (None, "embed"), rngs=rngs, **dt)

    def __call__(self, input_ids):
        positions = jnp.arange(input_ids.shape[-1])
        return self.token_embedding(input_ids) + self.position_embedding(positions)[None]


class CLIPAttention(nnx.Module):
    """Multi-head self-attention; causal for the text tower, bidirectional (``causal=False``) for the vision tower.

    ``cfg`` is any config with hidden_size / num_attention_heads (CLIPTextConfig or CLIPVisionConfig)."""

    def __init__(self, cfg, *, causal: bool = True, rngs, **dt):
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.causal = causal
        self.q_proj = dense(h, h, ("embed", "heads"), rngs=rngs, **dt)
        self.k_proj = dense(h, h, ("embed", "heads"), rngs=rngs, **dt)
        self.v_proj = dense(h, h, ("embed", "heads"), rngs=rngs, **dt)
        self.out_proj = dense(h, h, ("heads", "embed"), rngs=rngs, **dt)

    def __call__(self, x, mask=None):
        out = attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.num_heads,
                        mask=mask, is_causal=self.causal)
        return self.out_proj(out)


class CLIPMLP(nnx.Module):
    def __init__(self, cfg, *, rngs, **dt):
        self.act = activation(cfg.hidden_act)
        self.fc1 = dense(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), rngs=rngs, **dt)
        self.fc2 = dense(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), rngs=rngs, **dt)

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)) (shared by the text and vision towers)."""

    def __init__(self, cfg, *, causal: bool = True, rngs, **dt):
        self.self_attn = CLIPAttention(cfg, causal=causal, rngs=rngs, **dt)
        self.layer_norm1 = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs, **dt)
        self.mlp = CLIPMLP(cfg, rngs=rngs, **dt)
        self.layer_norm2 = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs, **dt)

    def __call__(self, x, mask=None):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    """The stack of :class:`CLIPEncoderLayer`; returns the input then every layer's output."""

    def __init__(self, cfg, *, causal: bool = True, rngs, **dt):
        self.layers = nnx.List([CLIPEncoderLayer(cfg, causal=causal, rngs=rngs, **dt)
                                for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x, mask=None):
        states = [x]
        for layer in self.layers:
            x = layer(x, mask)
            states.append(x)
        return tuple(states)


class CLIPTextTransformer(nnx.Module):
    """Embeddings, causal encoder, final layer norm and EOS pooling."""

    def __init__(self, cfg: CLIPTextConfig, *, rngs, **dt):
        self.config = cfg
        self.embeddings = CLIPTextEmbeddings(cfg, rngs=rngs, **dt)
        self.encoder = CLIPEncoder(cfg, rngs=rngs, **dt)
        self.final_layer_norm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs, **dt)

    def __call__(self, input_ids, attention_mask=None) -> CLIPTextOutput:
        cfg = self.config
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids: expected an integer array [batch, length], got {input_ids.dtype}"
                             f"{list(input_ids.shape)}")
        if input_ids.shape[1] > cfg.max_position_embeddings:
            raise ValueError(f"input_ids: length {input_ids.shape[1]} exceeds max_position_embeddings="
                             f"{cfg.max_position_embeddings}")
        mask = None
        if attention_mask is not None:  # padding mask on the keys, combined with the causal mask
            mask = jnp.asarray(attention_mask).astype(bool)[:, None, None, :]
        states = self.encoder(self.embeddings(input_ids), mask)
        last = self.final_layer_norm(states[-1])
        if cfg.eos_token_id == 2:  # legacy configs: EOS is the largest id in each row
            eos_pos = jnp.argmax(input_ids, axis=-1)
        else:  # first occurrence of eos_token_id (padding may repeat it)
            eos_pos = jnp.argmax(input_ids == cfg.eos_token_id, axis=-1)
        pooled = jnp.take_along_axis(last, eos_pos[:, None, None], axis=1)[:, 0]
        return CLIPTextOutput(last_hidden_state=last, pooler_output=pooled, hidden_states=states)


def _as_config(config) -> CLIPTextConfig:
    return config if isinstance(config, CLIPTextConfig) else CLIPTextConfig.from_dict(config)


class CLIPTextModel(nnx.Module):
    """CLIP text encoder: ``model(input_ids) -> CLIPTextOutput`` (jit with ``nnx.jit``).

    Args:
      config: a :class:`CLIPTextConfig` or a dict with transformers' ``CLIPTextConfig`` keys.
      rngs: parameter initialisation.
      dtype: computation dtype (None: that of the parameters); param_dtype: parameter dtype.
    """

    def __init__(self, config: CLIPTextConfig | Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32):
        self.config = _as_config(config)
        self.text_model = CLIPTextTransformer(self.config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, input_ids, attention_mask=None) -> CLIPTextOutput:
        return self.text_model(input_ids, attention_mask)


class CLIPTextModelWithProjection(CLIPTextModel):
    """CLIP text encoder plus ``text_projection`` (SDXL's second encoder): also returns ``text_embeds``."""

    def __init__(self, config: CLIPTextConfig | Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32):
        super().__init__(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.text_projection = dense(self.config.hidden_size, self.config.projection_dim, ("embed", None),
                                     rngs=rngs, dtype=dtype, param_dtype=param_dtype, use_bias=False)

    def __call__(self, input_ids, attention_mask=None) -> CLIPTextOutput:
        out = self.text_model(input_ids, attention_mask)
        return out.replace(text_embeds=self.text_projection(out.pooler_output))
