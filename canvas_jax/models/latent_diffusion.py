"""The module a latent-diffusion run trains and checkpoints: the denoiser plus the frozen parts it needs."""

from __future__ import annotations

from flax import nnx

from canvas_jax.models.unet import UNet2DConditionModel
from canvas_jax.models.vae import AutoencoderKL


class LatentDiffusion(nnx.Module):
    """The UNet being trained, the frozen VAE and, when text embeddings are not cached, the frozen text encoder
    (frozen parts as :class:`~canvas_jax.models.frozen.Frozen` variables); ``reference``: a frozen UNet that a
    preference objective compares the policy with (``task=dpo`` with full fine-tuning), else None."""

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: nnx.Module | None = None,
                 reference: UNet2DConditionModel | None = None):
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.reference = reference
