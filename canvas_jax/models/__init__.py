"""canvas_jax models: the conditional UNet, the KL autoencoder and their shared layers (NHWC, Flax NNX)."""

from canvas_jax.models.unet import UNet2DConditionModel
from canvas_jax.models.vae import AutoencoderKL, DiagonalGaussian

__all__ = ["AutoencoderKL", "DiagonalGaussian", "UNet2DConditionModel"]
