"""Inpainting fine-tuning (``task=inpaint``): a 9-channel UNet started from a text-to-image model.

The UNet's input is ``[noisy latents (4), mask (1), masked-image latents (4)]`` as diffusers' inpainting
pipelines (and :class:`canvas_jax.Pipeline`) feed it: the mask downsampled by striding, the masked image
``image * (mask < 0.5)`` encoded to its posterior mode. :func:`inpaint_unet_from` copies every weight of
the base UNet and zero-initialises the five new ``conv_in`` input channels, so at step 0 the model equals
the base model on the first four channels. ``init_from`` is a ``text_to_image`` (or ``finetune``) run
folder or a diffusers pipeline folder: see :mod:`canvas_jax.train.init_from`.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from canvas_jax.models.unet import UNet2DConditionModel
from canvas_jax.models.frozen import unfreeze
from canvas_jax.train.init_from import InitFromTask
from canvas_jax.train.t2i_task import vae_latents


def inpaint_unet_from(base: UNet2DConditionModel, *, rngs: nnx.Rngs, dtype=jnp.float32) -> UNet2DConditionModel:
    """A UNet with ``2 * latent + 1`` input channels equal to ``base`` on the first ``latent`` channels."""
    latent = base.config["in_channels"]
    config = {k: v for k, v in base.config.items() if not k.startswith("_")}
    config["in_channels"] = 2 * latent + 1
    unet = UNet2DConditionModel(config, rngs=rngs, dtype=dtype)
    base_flat = dict(nnx.to_flat_state(nnx.state(base, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(unet, nnx.Param)):
        src = base_flat[path][...]
        if path == ("conv_in", "kernel"):  # HWIO: zero kernels for the new input channels
            pad = jnp.zeros(src.shape[:2] + (var.shape[2] - src.shape[2],) + src.shape[3:], src.dtype)
            src = jnp.concatenate([src, pad], axis=2)
        if src.shape != var.shape:
            raise ValueError(f"inpaint UNet: {'.'.join(map(str, path))} has shape {var.shape}, base {src.shape}")
        var.set_value(src.astype(var.dtype))
    return unet


class InpaintTask(InitFromTask):
    """Text-to-image training with a 9-channel UNet and the batch's ``mask`` (1 = repaint)."""

    in_channels_extra = 5

    def unet_config(self) -> dict:
        config = self.base_unet_config()
        return {**config, "in_channels": 2 * config["in_channels"] + 1}

    def build_unet(self, rngs: nnx.Rngs) -> UNet2DConditionModel:
        return inpaint_unet_from(unfreeze(self.base_unet), rngs=rngs, dtype=self.dtype)

    def extra_inputs(self, model, batch, latents):
        if "mask" not in batch:
            raise KeyError(f"batch has no 'mask' (keys: {sorted(batch)}); the inpaint task needs float32 "
                           "[B, H, W, 1] masks (1 = region to repaint)")
        mask = (batch["mask"].astype(jnp.float32) >= 0.5).astype(jnp.float32)
        image = batch["image"].astype(jnp.float32)
        f = image.shape[1] // latents.shape[1]
        masked = vae_latents(model.vae, image * (mask < 0.5), None)
        return jnp.concatenate([mask[:, ::f, ::f, :], masked], axis=-1)
