"""An image-text embedding model (CLIP-style) on a frozen pretrained text encoder, as Flax NNX modules.

- :class:`ImageTower`: a small CNN. Stages of (3x3 stride-2 conv, 3x3 conv), GELU after each; the final
  feature map is flattened (not averaged: where a shape sits is part of what a caption says), layer-normed
  and projected to ``embed_dim``.
- :class:`TextProjection`: the frozen encoder's token states, mean-pooled over the attention mask
  (:func:`masked_mean`), through a trainable MLP (``text_hidden`` > 0) or linear map to ``embed_dim``.
- :class:`ImageTextModel`: both, plus CLIP's learned temperature: ``log_scale`` starts at ``log(1 /
  init_temperature)`` and is clipped to ``log(max_logit_scale)`` when used (CLIP clamps it at 100). When the
  text states are not cached the frozen text encoder rides along as :class:`~canvas_jax.models.frozen.Frozen`
  variables.

:func:`contrastive_loss` is the symmetric InfoNCE loss; :func:`same_caption` tells which rows of a batch share a
caption (for retrieval metrics).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from canvas_jax.models.layers import conv
from core_jax.nn import dense, layer_norm


@dataclasses.dataclass(frozen=True)
class ImageTextConfig:
    """Architecture of :class:`ImageTextModel`."""

    image_size: int = 32  # input side in pixels (other sizes are resized by the embedder)
    channels: tuple[int, ...] = (32, 64, 128)  # per stage; each stage halves the side
    embed_dim: int = 128
    text_dim: int = 384  # hidden size of the frozen text encoder (MiniLM: 384)
    text_hidden: int = 512  # hidden width of the text MLP (0: a linear projection)
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self):
        if not self.channels or any(int(c) < 1 for c in self.channels):
            raise ValueError(f"clip.channels={list(self.channels)}: expected a non-empty list of positive widths")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        side = self.image_size / 2 ** len(self.channels)
        if side < 1 or side != int(side):
            raise ValueError(f"clip: image_size={self.image_size} does not halve {len(self.channels)} times "
                             f"(one per entry of channels={list(self.channels)}) to a whole side; expected a "
                             f"multiple of {2 ** len(self.channels)}")
        for key in ("embed_dim", "text_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"clip.{key}={getattr(self, key)}: expected a positive size")
        if self.text_hidden < 0:
            raise ValueError(f"clip.text_hidden={self.text_hidden}: expected 0 (linear) or a positive width")
        if not (self.init_temperature > 0 and 1 / self.init_temperature <= self.max_logit_scale):
            raise ValueError(f"clip.init_temperature={self.init_temperature}, max_logit_scale={self.max_logit_scale}"
                             ": expected 0 < 1 / init_temperature <= max_logit_scale")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ImageTextConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"clip: unknown keys {unknown}; expected keys from {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "channels": list(self.channels)}


class ImageTower(nnx.Module):
    """A small CNN: images float [B, S, S, 3] in [-1, 1] -> unnormalised embeddings [B, embed_dim]."""

    def __init__(self, cfg: ImageTextConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        dt = {"dtype": dtype}
        convs, c_in = [], 3
        for c in cfg.channels:
            convs += [conv(c_in, c, 3, stride=2, rngs=rngs, **dt), conv(c, c, 3, rngs=rngs, **dt)]
            c_in = c
        self.convs = nnx.List(convs)
        side = cfg.image_size // 2 ** len(cfg.channels)
        flat = side * side * c_in
        self.norm = layer_norm(flat, 1e-5, rngs=rngs, **dt)
        self.proj = dense(flat, cfg.embed_dim, ("embed", None), rngs=rngs, **dt)

    def feature_tokens(self, x: jax.Array) -> jax.Array:
        """The last feature map as tokens [B, side * side, channels] (row-major cells; the analogue of a ViT's
        penultimate hidden states: what an IP-Adapter Plus resampler reads)."""
        for layer in self.convs:
            x = jax.nn.gelu(layer(x))
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def features(self, x: jax.Array) -> jax.Array:
        """The flattened, LayerNorm'd feature map [B, side * side * channels] the projection reads."""
        x = self.feature_tokens(x)
        return self.norm(x.reshape(x.shape[0], -1))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(self.features(x))


class TextProjection(nnx.Module):
    """Pooled text states [B, text_dim] -> unnormalised embeddings [B, embed_dim]."""

    def __init__(self, cfg: ImageTextConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        dt = {"dtype": dtype}
        self.norm = layer_norm(cfg.text_dim, 1e-5, rngs=rngs, **dt)
        if cfg.text_hidden:
            self.hidden = dense(cfg.text_dim, cfg.text_hidden, ("embed", "mlp"), rngs=rngs, **dt)
            self.out = dense(cfg.text_hidden, cfg.embed_dim, ("mlp", None), rngs=rngs, **dt)
        else:
            self.hidden = None
            self.out = dense(cfg.text_dim, cfg.embed_dim, ("embed", None), rngs=rngs, **dt)

    def __call__(self, pooled: jax.Array) -> jax.Array:
        x = self.norm(pooled)
        if self.hidden is not None:
            x = jax.nn.gelu(self.hidden(x))
        return self.out(x)


def masked_mean(states: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of token states [B, T, D] over the tokens the mask [B, T] keeps (float32 [B, D])."""
    m = attention_mask.astype(jnp.float32)[..., None]
    return jnp.sum(states.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class ImageTextModel(nnx.Module):
    """Image tower, text projection and learned temperature; ``text_encoder``: the frozen encoder when the
    text states are not cached (else None)."""

    def __init__(self, cfg: ImageTextConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 text_encoder: nnx.Module | None = None):
        self.config = cfg
        self.image_tower = ImageTower(cfg, rngs=rngs, dtype=dtype)
        self.text_projection = TextProjection(cfg, rngs=rngs, dtype=dtype)
        self.log_scale = nnx.Param(jnp.asarray(math.log(1.0 / cfg.init_temperature), jnp.float32))
        self.text_encoder = text_encoder

    def logit_scale(self) -> jax.Array:
        return jnp.exp(jnp.minimum(self.log_scale[...].astype(jnp.float32), math.log(self.config.max_logit_scale)))

    def embed_images(self, images: jax.Array) -> jax.Array:
        """Images float [B, S, S, 3] in [-1, 1] -> L2-normalised [B, embed_dim]."""
        return l2_normalize(self.image_tower(images))

    def image_tokens(self, images: jax.Array) -> jax.Array:
        """Images float [B, S, S, 3] in [-1, 1] -> the image tower's feature map tokens [B, T, channels]."""
        return self.image_tower.feature_tokens(images)

    def embed_pooled(self, pooled: jax.Array) -> jax.Array:
        """Mean-pooled text states [B, text_dim] -> L2-normalised [B, embed_dim]."""
        return l2_normalize(self.text_projection(pooled))


def same_caption(keys: jax.Array) -> jax.Array:
    """[B, B] bool: rows of ``keys`` (token ids [B, T] or cached pooled states [B, D]) that are identical."""
    keys = keys.reshape(keys.shape[0], -1)
    return jnp.all(keys[:, None, :] == keys[None, :, :], axis=-1)


def contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """Symmetric InfoNCE: the mean of the image->text and text->image cross-entropies of ``logit_scale *
    image_emb @ text_emb.T`` with the diagonal as targets.

    Identical captions in a batch need no special case: their text embeddings are identical, so the sum of
    their rows equals the loss with every copy as a positive (a uniform soft target over the copies)."""
    logits = logit_scale * (image_emb @ text_emb.T)
    labels = jnp.arange(logits.shape[0])
    i2t = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], axis=1)
    t2i = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], axis=0)
    return 0.5 * (jnp.mean(i2t) + jnp.mean(t2i))
