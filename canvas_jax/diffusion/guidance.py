"""Classifier-free guidance, with the guidance rescale of Lin et al. 2023 ("Common Diffusion Noise
Schedules and Sample Steps are Flawed", section 3.4) exactly as diffusers' ``rescale_noise_cfg``."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _per_sample(value, like: jax.Array) -> jax.Array:
    """A scalar, or one value per batch row, shaped to broadcast against ``like``."""
    value = jnp.asarray(value, jnp.float32)
    if value.ndim == 0:
        return value
    if value.shape != like.shape[:1]:
        raise ValueError(f"a per-sample guidance value must have shape ({like.shape[0]},), got {value.shape}")
    return value.reshape(value.shape + (1,) * (like.ndim - 1))


def rescale_noise_cfg(guided: jax.Array, cond: jax.Array, rescale) -> jax.Array:
    """Mix ``guided`` with itself rescaled to the per-sample std of ``cond`` (unbiased std, like torch)."""
    axes = tuple(range(1, guided.ndim))
    std_cond = jnp.std(cond, axis=axes, keepdims=True, ddof=1)
    std_guided = jnp.std(guided, axis=axes, keepdims=True, ddof=1)
    rescale = _per_sample(rescale, guided)
    return rescale * (guided * (std_cond / std_guided)) + (1.0 - rescale) * guided


def cfg(uncond: jax.Array, cond: jax.Array, scale, rescale=0.0) -> jax.Array:
    """``uncond + scale * (cond - uncond)``, then ``rescale_noise_cfg`` when ``rescale`` is not the literal 0.

    ``scale`` and ``rescale`` are scalars or (batch,) vectors (Python numbers or arrays, traced or not).
    """
    if uncond.shape != cond.shape:
        raise ValueError(f"uncond and cond model outputs must have the same shape, got {uncond.shape} and {cond.shape}")
    compute = jnp.promote_types(uncond.dtype, jnp.float32)
    uncond, cond_f = uncond.astype(compute), cond.astype(compute)
    guided = uncond + _per_sample(scale, uncond) * (cond_f - uncond)
    if not (isinstance(rescale, (int, float)) and rescale == 0):
        guided = rescale_noise_cfg(guided, cond_f, rescale)
    return guided.astype(cond.dtype)


def cfg_from_batch(model_out: jax.Array, scale, rescale=0.0) -> jax.Array:
    """``cfg`` on a model output whose batch is ``[uncond; cond]`` (the doubled batch of a guided step)."""
    if model_out.shape[0] % 2:
        raise ValueError(f"a guided batch stacks uncond and cond halves: batch must be even, got {model_out.shape[0]}")
    uncond, cond = jnp.split(model_out, 2, axis=0)
    return cfg(uncond, cond, scale, rescale)
