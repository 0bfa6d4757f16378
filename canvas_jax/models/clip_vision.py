"""CLIP vision tower (the IP-Adapter image encoder) as Flax NNX modules.

Attributes are named like transformers' ``CLIPVisionModelWithProjection`` (``vision_model.embeddings.patch_embedding``,
``vision_model.encoder.layers[i]``, ``visual_projection``) so :mod:`core_jax.state_dict` maps them to
checkpoint keys. The encoder layers are the text tower's (:class:`~canvas_jax.models.clip.CLIPEncoder`), run
without the causal mask. Images are NHWC float arrays already normalised with the CLIP mean / std
(:func:`canvas_jax.images.clip_image_inputs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from canvas_jax.models.clip import CLIPEncoder
from canvas_jax.models.layers import conv
from core_jax.nn import activation, config_from_dict, dense, embed, layer_norm


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """The keys of transformers' ``CLIPVisionConfig`` that define the network (same defaults)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"CLIPVisionConfig: hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIPVisionConfig: image_size={self.image_size} is not a multiple of "
                             f"patch_size={self.patch_size}")
        try:
            activation(self.hidden_act)
        except ValueError as e:
            raise ValueError(f"CLIPVisionConfig.hidden_act: {e}") from None

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CLIPVisionConfig":
        """From a ``CLIPVisionConfig`` dict, or a full ``CLIPConfig`` dict (its ``vision_config`` is used)."""
        if isinstance(values, Mapping) and isinstance(values.get("vision_config"), Mapping):
            values = {"projection_dim": values.get("projection_dim"), **values["vision_config"]}
            values = {k: v for k, v in values.items() if v is not None}
        return config_from_dict(cls, values, "CLIPVisionConfig")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model_type": "clip_vision_model"}


@flax.struct.dataclass
class CLIPVisionOutput:
    """``hidden_states`` holds the (pre-layer-normed) embeddings then every layer's output: ``hidden_states[-2]``
    is the penultimate layer IP-Adapter Plus reads. ``pooler_output`` is the class token after
    ``post_layernorm``; ``image_embeds`` its projection (with :class:`CLIPVisionModelWithProjection`)."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array
    hidden_states: tuple[jax.Array, ...]
    image_embeds: jax.Array | None = None


class CLIPVisionEmbeddings(nnx.Module):
    """Non-overlapping patch convolution (no bias), a learned class token in front, learned positions."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs, dtype=None, param_dtype=jnp.float32):
        self.config = cfg
        self.class_embedding = nnx.Param(nnx.with_partitioning(nnx.initializers.normal(0.02), ("embed",))(
            rngs.params(), (cfg.hidden_size,), param_dtype))
        self.patch_embedding = conv(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size,
                                    padding=0, use_bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.position_embedding = embed(cfg.num_positions, cfg.hidden_size, (None, "embed"), rngs=rngs, dtype=dtype,
                                        param_dtype=param_dtype)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        patches = self.patch_embedding(pixel_values)  # [B, h, w, D]
        b = patches.shape[0]
        patches = patches.reshape(b, -1, patches.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (b, 1, patches.shape[-1]))
        tokens = jnp.concatenate([cls, patches], axis=1)
        return tokens + self.position_embedding(jnp.arange(tokens.shape[1]))[None]


class CLIPVisionTransformer(nnx.Module):
    """Embeddings, ``pre_layrnorm`` (transformers' spelling), bidirectional encoder, class-token pooling and
    ``post_layernorm``."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs, **dt):
        self.config = cfg
        self.embeddings = CLIPVisionEmbeddings(cfg, rngs=rngs, **dt)
        self.pre_layrnorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs, **dt)
        self.encoder = CLIPEncoder(cfg, causal=False, rngs=rngs, **dt)
        self.post_layernorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs, **dt)

    def __call__(self, pixel_values) -> CLIPVisionOutput:
        cfg = self.config
        x = jnp.asarray(pixel_values)
        want = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"pixel_values: expected an NHWC array [batch, {', '.join(map(str, want))}] "
                             f"(CLIP-normalised), got shape {tuple(x.shape)}")
        states = self.encoder(self.pre_layrnorm(self.embeddings(x)))
        pooled = self.post_layernorm(states[-1][:, 0])
        return CLIPVisionOutput(last_hidden_state=states[-1], pooler_output=pooled, hidden_states=states)


def _as_config(config) -> CLIPVisionConfig:
    return config if isinstance(config, CLIPVisionConfig) else CLIPVisionConfig.from_dict(config)


class CLIPVisionModel(nnx.Module):
    """CLIP image encoder: ``model(pixel_values NHWC) -> CLIPVisionOutput`` (jit with ``nnx.jit``)."""

    def __init__(self, config: CLIPVisionConfig | Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32):
        self.config = _as_config(config)
        self.vision_model = CLIPVisionTransformer(self.config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, pixel_values) -> CLIPVisionOutput:
        return self.vision_model(pixel_values)


class CLIPVisionModelWithProjection(CLIPVisionModel):
    """The vision tower plus ``visual_projection`` (no bias): also returns ``image_embeds`` [B, projection_dim]."""

    def __init__(self, config: CLIPVisionConfig | Mapping[str, Any], *, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32):
        super().__init__(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.visual_projection = dense(self.config.hidden_size, self.config.projection_dim, ("embed", None),
                                       rngs=rngs, dtype=dtype, param_dtype=param_dtype, use_bias=False)

    def __call__(self, pixel_values) -> CLIPVisionOutput:
        out = self.vision_model(pixel_values)
        return out.replace(image_embeds=self.visual_projection(out.pooler_output))
