"""KL autoencoder (the latent space of SD / SDXL) built from a diffusers ``vae/config.json`` dict.

``AutoencoderKL(config, rngs=...)``: ``encode(x)`` maps NHWC images in [-1, 1] to a :class:`DiagonalGaussian`
over latents, ``decode(z)`` maps latents back. Diffusion runs on ``(z - shift_factor) * scaling_factor``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from canvas_jax.models.layers import Downsample2D, ResnetBlock2D, SpatialSelfAttention, Upsample2D, conv, group_norm
from core_jax.nn import Dtype, activation

VAE_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"], "block_out_channels": [64], "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 4, "norm_num_groups": 32, "sample_size": 32, "scaling_factor": 0.18215,
    "shift_factor": None, "latents_mean": None, "latents_std": None, "force_upcast": True, "use_quant_conv": True,
    "use_post_quant_conv": True, "mid_block_add_attention": True,
}
_EPS = 1e-6  # diffusers' VAE uses this epsilon for every norm


@struct.dataclass
class DiagonalGaussian:
    """Diagonal Gaussian over NHWC latents (a pytree, so it can leave ``jit``); ``logvar`` is clipped to [-30, 20]."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> DiagonalGaussian:
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return cls(mean, jnp.clip(logvar, -30.0, 20.0))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> jax.Array:
        return jnp.exp(self.logvar)

    def sample(self, rng: jax.Array) -> jax.Array:
        return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """KL divergence to the standard normal, summed over H, W, C -> [B]."""
        return 0.5 * jnp.sum(jnp.square(self.mean) + self.var - 1.0 - self.logvar, axis=(1, 2, 3))

    def nll(self, x: jax.Array) -> jax.Array:
        """Negative log-likelihood of ``x``, summed over H, W, C -> [B]."""
        return 0.5 * jnp.sum(jnp.log(2 * jnp.pi) + self.logvar + jnp.square(x - self.mean) / self.var,
                             axis=(1, 2, 3))


def vae_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a diffusers AutoencoderKL config and return it with diffusers' defaults filled in."""
    unknown = [k for k in config if k not in VAE_DEFAULTS and not k.startswith("_")]
    if unknown:
        near = difflib.get_close_matches(unknown[0], VAE_DEFAULTS, n=1)
        raise ValueError(f"AutoencoderKL config: unknown key {unknown[0]!r}"
                         + (f"; did you mean {near[0]!r}?" if near else ""))
    cfg = {**VAE_DEFAULTS, **dict(config)}
    n = len(cfg["block_out_channels"])
    for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        bad = [t for t in cfg[key] if t != kind]
        if bad:
            raise ValueError(f"AutoencoderKL config: {key} contains {bad[0]!r}; only {kind!r} is supported")
        if len(cfg[key]) != n:
            raise ValueError(f"AutoencoderKL config: {key} has {len(cfg[key])} entries, expected one per "
                             f"block_out_channels entry ({n})")
    return cfg


class VAEMidBlock(nnx.Module):
    """``resnets[0] -> attentions[0] (group-normed single-head self-attention) -> resnets[1]``."""

    def __init__(self, channels: int, *, groups: int, act_fn: str, add_attention: bool, rngs: nnx.Rngs,
                 dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List([ResnetBlock2D(channels, channels, temb_channels=None, groups=groups, eps=_EPS,
                                               act_fn=act_fn, **kw) for _ in range(2)])
        self.attentions = nnx.List(
            [SpatialSelfAttention(channels, heads=1, groups=groups, eps=_EPS, **kw)] if add_attention else [])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class EncoderBlock(nnx.Module):
    """diffusers' DownEncoderBlock2D: ``resnets`` then a stride-2 ``downsamplers[0]`` padded bottom/right."""

    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, groups: int, act_fn: str,
                 add_downsample: bool, rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None, groups=groups,
                          eps=_EPS, act_fn=act_fn, **kw) for i in range(num_layers)])
        self.downsamplers = nnx.List([Downsample2D(out_channels, padding=0, **kw)]) if add_downsample else None

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class DecoderBlock(nnx.Module):
    """diffusers' UpDecoderBlock2D: ``resnets`` then a nearest-2x ``upsamplers[0]``."""

    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, groups: int, act_fn: str,
                 add_upsample: bool, rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None, groups=groups,
                          eps=_EPS, act_fn=act_fn, **kw) for i in range(num_layers)])
        self.upsamplers = nnx.List([Upsample2D(out_channels, **kw)]) if add_upsample else None

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder(nnx.Module):
    """Image [B, H, W, in_channels] -> Gaussian moments [B, H/f, W/f, 2 * latent_channels]."""

    def __init__(self, cfg: Mapping[str, Any], *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        boc, groups, act = list(cfg["block_out_channels"]), cfg["norm_num_groups"], cfg["act_fn"]
        self.conv_in = conv(cfg["in_channels"], boc[0], 3, **kw)
        self.down_blocks = nnx.List([
            EncoderBlock(boc[max(i - 1, 0)], boc[i], num_layers=cfg["layers_per_block"], groups=groups, act_fn=act,
                         add_downsample=i < len(boc) - 1, **kw) for i in range(len(boc))])
        self.mid_block = VAEMidBlock(boc[-1], groups=groups, act_fn=act, add_attention=cfg["mid_block_add_attention"],
                                     **kw)
        self.conv_norm_out = group_norm(boc[-1], groups, _EPS, **kw)
        self.conv_act = activation(act)
        self.conv_out = conv(boc[-1], 2 * cfg["latent_channels"], 3, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """Latents [B, h, w, latent_channels] -> image [B, h*f, w*f, out_channels]."""

    def __init__(self, cfg: Mapping[str, Any], *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        rboc, groups, act = list(cfg["block_out_channels"])[::-1], cfg["norm_num_groups"], cfg["act_fn"]
        self.conv_in = conv(cfg["latent_channels"], rboc[0], 3, **kw)
        self.mid_block = VAEMidBlock(rboc[0], groups=groups, act_fn=act, add_attention=cfg["mid_block_add_attention"],
                                     **kw)
        self.up_blocks = nnx.List([
            DecoderBlock(rboc[max(i - 1, 0)], rboc[i], num_layers=cfg["layers_per_block"] + 1, groups=groups,
                         act_fn=act, add_upsample=i < len(rboc) - 1, **kw) for i in range(len(rboc))])
        self.conv_norm_out = group_norm(rboc[-1], groups, _EPS, **kw)
        self.conv_act = activation(act)
        self.conv_out = conv(rboc[-1], cfg["out_channels"], 3, **kw)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
    """diffusers-compatible KL autoencoder (``encoder``, ``decoder``, ``quant_conv``, ``post_quant_conv``), NHWC.

    The validated config (defaults filled in) is kept as ``self.config``.
    """

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32):
        cfg = vae_config(config)
        self.config = cfg
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        latent = cfg["latent_channels"]
        self.encoder = Encoder(cfg, **kw)
        self.decoder = Decoder(cfg, **kw)
        self.quant_conv = conv(2 * latent, 2 * latent, 1, **kw) if cfg["use_quant_conv"] else None
        self.post_quant_conv = conv(latent, latent, 1, **kw) if cfg["use_post_quant_conv"] else None

    @property
    def scaling_factor(self) -> float:
        return float(self.config["scaling_factor"])

    @property
    def shift_factor(self) -> float:
        """The latent shift (0.0 when the config has none, as for SD 1.x/2.x/SDXL)."""
        return float(self.config["shift_factor"] or 0.0)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config["block_out_channels"]) - 1)

    def encode(self, x: jax.Array) -> DiagonalGaussian:
        """Images NHWC in [-1, 1] -> the posterior over (unscaled) latents."""
        if x.ndim != 4 or x.shape[-1] != self.config["in_channels"]:
            raise ValueError(f"AutoencoderKL.encode: expected NHWC images with {self.config['in_channels']} "
                             f"channels, got shape {x.shape}")
        moments = self.encoder(x.astype(self.dtype))
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, z: jax.Array) -> jax.Array:
        """(Unscaled) latents NHWC -> images NHWC (roughly in [-1, 1])."""
        if z.ndim != 4 or z.shape[-1] != self.config["latent_channels"]:
            raise ValueError(f"AutoencoderKL.decode: expected NHWC latents with {self.config['latent_channels']} "
                             f"channels, got shape {z.shape}")
        z = z.astype(self.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> tuple[jax.Array, DiagonalGaussian]:
        """Reconstruct ``x`` through a posterior sample (or its mode when ``rng`` is None)."""
        posterior = self.encode(x)
        z = posterior.mode() if rng is None else posterior.sample(rng)
        return self.decode(z), posterior
