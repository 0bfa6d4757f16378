"""Train a KL autoencoder (``task=vae``): reconstruction (L1 or L2) plus a small KL weight.

No perceptual or adversarial loss: at Shapes / CIFAR size plain reconstruction gives sharp enough latents
for the tiny diffusion models. Eval reports the reconstruction MSE of the posterior mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from canvas_jax.models.vae import AutoencoderKL
from canvas_jax.train.data import DataFn, canvas_data
from core_jax.task import DataContext


def _check_image(batch) -> jax.Array:
    if "image" not in batch:
        raise KeyError(f"batch has no 'image' (keys: {sorted(batch)}); expected float32 [B, H, W, 3] in [-1, 1]")
    return batch["image"]


class VAETask:
    """A :class:`core_jax.task.Task` training ``cfg.vae.config`` on ``cfg.data``'s images."""

    def __init__(self, cfg, *, data_fn: DataFn | None = None):
        if cfg.vae.recon_loss not in ("l1", "l2"):
            raise ValueError(f"vae.recon_loss={cfg.vae.recon_loss!r}: expected 'l1' or 'l2'")
        self.cfg = cfg
        self.data_fn = data_fn or canvas_data
        self.dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32

    def create_model(self, rngs: nnx.Rngs) -> AutoencoderKL:
        return AutoencoderKL(self.cfg.vae.config, rngs=rngs, dtype=self.dtype)

    def loss(self, model: AutoencoderKL, batch, rng):
        x = _check_image(batch).astype(jnp.float32)
        recon, posterior = model(x, rng)
        err = recon.astype(jnp.float32) - x
        l1, l2 = jnp.mean(jnp.abs(err)), jnp.mean(jnp.square(err))
        kl = jnp.mean(posterior.kl().astype(jnp.float32))
        rec = l1 if self.cfg.vae.recon_loss == "l1" else l2
        return rec + self.cfg.vae.kl_weight * kl, {"recon_l1": l1, "recon_mse": l2, "kl": kl}

    def eval_step(self, model: AutoencoderKL, batch):
        x = _check_image(batch).astype(jnp.float32)
        recon, posterior = model(x)
        err = jnp.square(recon.astype(jnp.float32) - x)
        n = x.shape[0]
        z = posterior.mode().astype(jnp.float32)
        return {"recon_mse": jnp.sum(jnp.mean(err, axis=(1, 2, 3))), "kl": jnp.sum(posterior.kl()),
                "latent_ms": jnp.sum(jnp.mean(jnp.square(z), axis=(1, 2, 3))), "count": jnp.float32(n)}

    def train_data(self, ctx: DataContext):
        return self.data_fn(self.cfg, None, ctx, "train", False)

    def eval_data(self, ctx: DataContext):
        return self.data_fn(self.cfg, None, ctx, "test", False)
