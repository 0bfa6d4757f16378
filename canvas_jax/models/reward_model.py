"""A learned preference (reward) model: ``r(image, caption) -> scalar``, trained Bradley-Terry style.

:class:`RewardModel` reuses the image-text model's towers (:mod:`canvas_jax.models.image_text`): the CNN
:class:`~canvas_jax.models.image_text.ImageTower` and the :class:`~canvas_jax.models.image_text.TextProjection` of
the frozen text encoder's mean-pooled states, summed and passed through a GELU MLP to one scalar. The
Bradley-Terry probability that ``a`` is preferred to ``b`` for one caption is ``sigmoid(r(a) - r(b))``
(:func:`bradley_terry_loss`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from canvas_jax.models.image_text import ImageTextConfig, ImageTower, TextProjection
from core_jax.nn import dense


class RewardModel(nnx.Module):
    """Image tower + text projection -> scalar; ``text_encoder``: the frozen encoder when the run does not cache
    the pooled text states (else None)."""

    def __init__(self, cfg: ImageTextConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 text_encoder: nnx.Module | None = None):
        self.config = cfg
        self.image_tower = ImageTower(cfg, rngs=rngs, dtype=dtype)
        self.text_projection = TextProjection(cfg, rngs=rngs, dtype=dtype)
        self.hidden = dense(cfg.embed_dim, cfg.embed_dim, (None, "mlp"), rngs=rngs, dtype=dtype)
        self.out = dense(cfg.embed_dim, 1, ("mlp", None), rngs=rngs, dtype=dtype)
        self.text_encoder = text_encoder

    def __call__(self, images: jax.Array, pooled: jax.Array) -> jax.Array:
        """Images float [B, S, S, 3] in [-1, 1] and pooled text states [B, text_dim] -> float32 rewards [B]."""
        h = jax.nn.gelu(self.image_tower(images) + self.text_projection(pooled))
        return self.out(jax.nn.gelu(self.hidden(h)))[:, 0].astype(jnp.float32)


def bradley_terry_loss(r_chosen: jax.Array, r_rejected: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``-mean(log sigmoid(r_chosen - r_rejected))`` over pairs ``[B]``; metrics ``bt_loss``, ``pair_acc`` (the
    fraction of pairs ranked right) and ``reward_margin`` (mean ``r_chosen - r_rejected``)."""
    margin = r_chosen.astype(jnp.float32) - r_rejected.astype(jnp.float32)
    loss = -jnp.mean(jax.nn.log_sigmoid(margin))
    return loss, {"bt_loss": loss, "pair_acc": jnp.mean((margin > 0).astype(jnp.float32)),
                  "reward_margin": jnp.mean(margin)}
