"""Conditional UNet (SD 1.x / 2.x / SDXL / inpainting) built from a diffusers ``unet/config.json`` dict.

Attribute names follow diffusers' ``UNet2DConditionModel`` so weights convert mechanically; the data layout
is NHWC. ``UNet2DConditionModel(config, rngs=...)(sample, timesteps, encoder_hidden_states)`` predicts
the noise (or v) for ``sample``; SDXL additionally takes ``added_cond_kwargs={"text_embeds", "time_ids"}``.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from canvas_jax.models.layers import (CrossContext, Downsample2D, ResnetBlock2D, TimestepEmbedding, Transformer2DModel,
                                      Upsample2D, conv, group_norm, timestep_embedding)
from core_jax.nn import Dtype, activation

# diffusers' defaults for every key of unet/config.json (the values are hyperparameters, not code).
UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "only_cross_attention": False, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
    "downsample_padding": 1, "mid_block_scale_factor": 1.0, "dropout": 0.0, "act_fn": "silu",
    "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": 1280, "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "attention_head_dim": 8, "num_attention_heads": None, "dual_cross_attention": False,
    "use_linear_projection": False, "class_embed_type": None, "addition_embed_type": None,
    "addition_time_embed_dim": None, "num_class_embeds": None, "upcast_attention": False,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional", "time_embedding_dim": None, "time_embedding_act_fn": None,
    "timestep_post_act": None, "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None, "attention_type": "default", "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None, "cross_attention_norm": None, "addition_embed_type_num_heads": 64,
}

# Keys whose only supported values are listed (the reference has more options we have not built).
_ONLY = {
    "class_embed_type": (None,), "num_class_embeds": (None,), "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,), "time_embedding_type": ("positional",), "time_cond_proj_dim": (None,),
    "attention_type": ("default",), "dual_cross_attention": (False,), "resnet_time_scale_shift": ("default",),
    "cross_attention_norm": (None,), "class_embeddings_concat": (False,),
    "mid_block_type": ("UNetMidBlock2DCrossAttn", None), "addition_embed_type": (None, "text_time"),
    "mid_block_only_cross_attention": (None, False),
}
_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
_META_KEYS = ("_class_name", "_diffusers_version", "_name_or_path")


def _fail(key: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"UNet2DConditionModel config: {key}={value!r} is not supported; expected {expected}")


def _per_stage(cfg: Mapping, key: str, n: int) -> list:
    value = cfg[key]
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"UNet2DConditionModel config: {key} has {len(value)} entries, expected one per "
                             f"down block ({n})")
        return list(value)
    return [value] * n


def unet_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a diffusers UNet config and return it with diffusers' defaults filled in (meta keys kept)."""
    unknown = [k for k in config if k not in UNET_DEFAULTS and not k.startswith("_")]
    if unknown:
        k = unknown[0]
        near = difflib.get_close_matches(k, UNET_DEFAULTS, n=1)
        raise ValueError(f"UNet2DConditionModel config: unknown key {k!r}"
                         + (f"; did you mean {near[0]!r}?" if near else ""))
    cfg = {**UNET_DEFAULTS, **dict(config)}
    for key, allowed in _ONLY.items():
        if cfg[key] not in allowed:
            raise _fail(key, cfg[key], " or ".join(repr(a) for a in allowed))
    n = len(cfg["down_block_types"])
    for key, types, allowed in (("down_block_types", cfg["down_block_types"], _DOWN_TYPES),
                                ("up_block_types", cfg["up_block_types"], _UP_TYPES)):
        for t in types:
            if t not in allowed:
                raise _fail(key, t, f"block types from {allowed}")
    if len(cfg["up_block_types"]) != n or len(cfg["block_out_channels"]) != n:
        raise ValueError(f"UNet2DConditionModel config: down_block_types ({n}), up_block_types "
                         f"({len(cfg['up_block_types'])}) and block_out_channels ({len(cfg['block_out_channels'])}) "
                         "must have the same length")
    if any(_per_stage(cfg, "only_cross_attention", n)):
        raise _fail("only_cross_attention", cfg["only_cross_attention"], "False")
    if cfg["norm_num_groups"] is None:
        raise _fail("norm_num_groups", None, "an int")
    if cfg["addition_embed_type"] == "text_time":
        for key in ("addition_time_embed_dim", "projection_class_embeddings_input_dim"):
            if cfg[key] is None:
                raise ValueError(f"UNet2DConditionModel config: addition_embed_type='text_time' needs {key}")
    if cfg["dropout"]:
        warnings.warn(f"UNet2DConditionModel: dropout={cfg['dropout']} is ignored (the model runs without dropout)",
                      stacklevel=3)
    return cfg


def _layers(value, num_resnets: int) -> list[int]:
    """transformer_layers_per_block entry of one stage -> transformer depth for each of its resnets."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * num_resnets


class DownBlock2D(nnx.Module):
    """``resnets`` (each followed by one of ``attentions`` when ``heads`` is given) then ``downsamplers``.
    Covers diffusers' DownBlock2D and CrossAttnDownBlock2D; returns the output and its skip tensors."""

    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, temb_channels: int, groups: int,
                 eps: float, act_fn: str, add_downsample: bool, downsample_padding: int, heads: int | None = None,
                 context_dim: int | None = None, transformer_layers=1, use_linear_projection: bool = False,
                 rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=temb_channels,
                          groups=groups, eps=eps, act_fn=act_fn, **kw) for i in range(num_layers)])
        self.attentions = None if heads is None else nnx.List([
            Transformer2DModel(out_channels, heads=heads, context_dim=context_dim, num_layers=depth, groups=groups,
                               use_linear_projection=use_linear_projection, **kw)
            for depth in _layers(transformer_layers, num_layers)])
        self.downsamplers = nnx.List([Downsample2D(out_channels, padding=downsample_padding, **kw)]) \
            if add_downsample else None

    def __call__(self, x, temb, context, context_mask=None) -> tuple[jax.Array, list[jax.Array]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context, context_mask=context_mask)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UNetMidBlock2DCrossAttn(nnx.Module):
    """``resnets[0] -> attentions[0] -> resnets[1]`` at the lowest resolution."""

    def __init__(self, channels: int, *, temb_channels: int, groups: int, eps: float, act_fn: str,
                 output_scale_factor: float, heads: int, context_dim: int, transformer_layers=1,
                 use_linear_projection: bool = False, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.resnets = nnx.List([
            ResnetBlock2D(channels, channels, temb_channels=temb_channels, groups=groups, eps=eps, act_fn=act_fn,
                          output_scale_factor=output_scale_factor, **kw) for _ in range(2)])
        self.attentions = nnx.List([
            Transformer2DModel(channels, heads=heads, context_dim=context_dim, num_layers=depth, groups=groups,
                               use_linear_projection=use_linear_projection, **kw)
            for depth in _layers(transformer_layers, 1)])

    def __call__(self, x, temb, context, context_mask=None) -> jax.Array:
        x = self.resnets[0](x, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x, context, context_mask=context_mask), temb)
        return x


class UpBlock2D(nnx.Module):
    """Each of ``resnets`` takes the running tensor concatenated with one skip tensor (channels last), each
    optionally followed by one of ``attentions``; then ``upsamplers``. Covers UpBlock2D and CrossAttnUpBlock2D."""

    def __init__(self, in_channels: int, prev_output_channels: int, out_channels: int, *, num_layers: int,
                 temb_channels: int, groups: int, eps: float, act_fn: str, add_upsample: bool,
                 heads: int | None = None, context_dim: int | None = None, transformer_layers=1,
                 use_linear_projection: bool = False, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        resnets = []
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channels if i == 0 else out_channels
            resnets.append(ResnetBlock2D(resnet_in + skip, out_channels, temb_channels=temb_channels, groups=groups,
                                         eps=eps, act_fn=act_fn, **kw))
        self.resnets = nnx.List(resnets)
        self.attentions = None if heads is None else nnx.List([
            Transformer2DModel(out_channels, heads=heads, context_dim=context_dim, num_layers=depth, groups=groups,
                               use_linear_projection=use_linear_projection, **kw)
            for depth in _layers(transformer_layers, num_layers)])
        self.upsamplers = nnx.List([Upsample2D(out_channels, **kw)]) if add_upsample else None

    def __call__(self, x, skips: list[jax.Array], temb, context, context_mask=None,
                 upsample_size: tuple[int, int] | None = None) -> jax.Array:
        for i, resnet in enumerate(self.resnets):
            x = resnet(jnp.concatenate([x, skips[-1 - i]], axis=-1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context, context_mask=context_mask)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNet2DConditionModel(nnx.Module):
    """Text-conditioned UNet with diffusers' architecture and parameter names.

    ``config`` has the keys of diffusers' ``unet/config.json`` (see :data:`UNET_DEFAULTS`); unsupported values
    are errors naming the key. The validated config (defaults filled in) is kept as ``self.config``.
    """

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32):
        cfg = unet_config(config)
        self.config = cfg
        self.dtype = dtype
        self.ip_adapter = nnx.data(None)  # IP-Adapter image projection (models.ip_adapter.attach_ip_adapter)
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        n = len(cfg["down_block_types"])
        boc = list(cfg["block_out_channels"])
        # diffusers' historical naming: attention_head_dim holds the number of heads unless num_attention_heads is set.
        heads = _per_stage(cfg, "num_attention_heads" if cfg["num_attention_heads"] else "attention_head_dim", n)
        context_dims = _per_stage(cfg, "cross_attention_dim", n)
        layers_per_block = _per_stage(cfg, "layers_per_block", n)
        depths = _per_stage(cfg, "transformer_layers_per_block", n)
        up_depths = cfg["reverse_transformer_layers_per_block"] or depths[::-1]
        groups, eps, act, linear = cfg["norm_num_groups"], cfg["norm_eps"], cfg["act_fn"], cfg["use_linear_projection"]
        block = dict(groups=groups, eps=eps, act_fn=act, use_linear_projection=linear, **kw)

        self.conv_in = conv(cfg["in_channels"], boc[0], cfg["conv_in_kernel"], **kw)
        temb_dim = cfg["time_embedding_dim"] or 4 * boc[0]
        self.time_embedding = TimestepEmbedding(boc[0], temb_dim, act_fn=act, post_act_fn=cfg["timestep_post_act"],
                                                **kw)
        self.add_embedding = TimestepEmbedding(cfg["projection_class_embeddings_input_dim"], temb_dim, **kw) \
            if cfg["addition_embed_type"] == "text_time" else None
        self.time_embed_act = None if cfg["time_embedding_act_fn"] is None else activation(cfg["time_embedding_act_fn"])

        down, out_ch = [], boc[0]
        for i, kind in enumerate(cfg["down_block_types"]):
            in_ch, out_ch = out_ch, boc[i]
            cross = kind == "CrossAttnDownBlock2D"
            down.append(DownBlock2D(
                in_ch, out_ch, num_layers=layers_per_block[i], temb_channels=temb_dim, add_downsample=i < n - 1,
                downsample_padding=cfg["downsample_padding"], heads=heads[i] if cross else None,
                context_dim=context_dims[i], transformer_layers=depths[i], **block))
        self.down_blocks = nnx.List(down)

        self.mid_block = UNetMidBlock2DCrossAttn(
            boc[-1], temb_channels=temb_dim, output_scale_factor=cfg["mid_block_scale_factor"], heads=heads[-1],
            context_dim=context_dims[-1], transformer_layers=depths[-1], **block) \
            if cfg["mid_block_type"] is not None else None

        up, rboc, rheads, rctx, rlayers = [], boc[::-1], heads[::-1], context_dims[::-1], layers_per_block[::-1]
        out_ch = rboc[0]
        for i, kind in enumerate(cfg["up_block_types"]):
            prev, out_ch = out_ch, rboc[i]
            cross = kind == "CrossAttnUpBlock2D"
            up.append(UpBlock2D(
                rboc[min(i + 1, n - 1)], prev, out_ch, num_layers=rlayers[i] + 1, temb_channels=temb_dim,
                add_upsample=i < n - 1, heads=rheads[i] if cross else None, context_dim=rctx[i],
                transformer_layers=up_depths[i], **block))
        self.up_blocks = nnx.List(up)

        self.conv_norm_out = group_norm(boc[0], groups, eps, **kw)
        self.conv_act = activation(act)
        self.conv_out = conv(boc[0], cfg["out_channels"], cfg["conv_out_kernel"], **kw)

    def _time_embedding(self, timesteps, batch: int, added_cond_kwargs) -> jax.Array:
        cfg = self.config
        t = jnp.asarray(timesteps)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
            raise ValueError(f"UNet2DConditionModel: timesteps must be a scalar or shape [{batch}], got {t.shape}")
        t = jnp.broadcast_to(t.reshape(-1), (batch,))
        proj = timestep_embedding(t, self.config["block_out_channels"][0], flip_sin_to_cos=cfg["flip_sin_to_cos"],
                                  freq_shift=cfg["freq_shift"])
        emb = self.time_embedding(proj.astype(self.dtype))
        if self.add_embedding is not None:
            if not added_cond_kwargs or "text_embeds" not in added_cond_kwargs or "time_ids" not in added_cond_kwargs:
                raise ValueError("UNet2DConditionModel with addition_embed_type='text_time' needs "
                                 "added_cond_kwargs={'text_embeds': [B, P], 'time_ids': [B, 6]}")
            text_embeds = jnp.asarray(added_cond_kwargs["text_embeds"])
            time_ids = jnp.asarray(added_cond_kwargs["time_ids"])
            time_embeds = timestep_embedding(time_ids.reshape(-1), cfg["addition_time_embed_dim"],
                                             flip_sin_to_cos=cfg["flip_sin_to_cos"], freq_shift=cfg["freq_shift"])
            add = jnp.concatenate([text_embeds.astype(jnp.float32), time_embeds.reshape(text_embeds.shape[0], -1)],
                                  axis=-1)
            want = cfg["projection_class_embeddings_input_dim"]
            if add.shape[-1] != want:
                raise ValueError(f"UNet2DConditionModel: text_embeds {text_embeds.shape} and time_ids {time_ids.shape} "
                                 f"give {add.shape[-1]} added features, expected "
                                 f"projection_class_embeddings_input_dim={want}")
            emb = emb + self.add_embedding(add.astype(self.dtype))
        return emb if self.time_embed_act is None else self.time_embed_act(emb)

    def __call__(self, sample: jax.Array, timesteps: jax.Array | float, encoder_hidden_states: jax.Array,
                 added_cond_kwargs: Mapping[str, jax.Array] | None = None, *,
                 encoder_attention_mask: jax.Array | None = None, ip_tokens: jax.Array | None = None) -> jax.Array:
        """sample [B, H, W, in_channels], timesteps scalar or [B], encoder_hidden_states [B, T, D]
        (optional boolean ``encoder_attention_mask`` [B, T], True = attend) -> [B, H, W, out_channels].

        ``ip_tokens`` [B, N, D]: IP-Adapter image tokens (``self.ip_adapter(image_embeds)``, see
        :mod:`canvas_jax.models.ip_adapter`) that the cross-attention layers attend to besides the text."""
        cfg = self.config
        if sample.ndim != 4 or sample.shape[-1] != cfg["in_channels"]:
            raise ValueError(f"UNet2DConditionModel: sample must be NHWC with {cfg['in_channels']} channels, "
                             f"got shape {sample.shape}")
        if encoder_hidden_states.ndim != 3:
            raise ValueError(f"UNet2DConditionModel: encoder_hidden_states must be [B, T, D], "
                             f"got shape {encoder_hidden_states.shape}")
        if cfg["center_input_sample"]:
            sample = 2 * sample - 1.0
        temb = self._time_embedding(timesteps, sample.shape[0], added_cond_kwargs)
        ctx, mask = encoder_hidden_states.astype(self.dtype), encoder_attention_mask
        if ip_tokens is not None:
            if self.ip_adapter is None:
                raise ValueError("UNet2DConditionModel: ip_tokens given but no IP-Adapter is attached "
                                 "(canvas_jax.models.ip_adapter.attach_ip_adapter)")
            if ip_tokens.ndim != 3 or ip_tokens.shape[0] != sample.shape[0]:
                raise ValueError(f"UNet2DConditionModel: ip_tokens must be [{sample.shape[0]}, N, D], "
                                 f"got shape {ip_tokens.shape}")
            ctx = CrossContext(ctx, ip_tokens.astype(self.dtype))

        x = self.conv_in(sample.astype(self.dtype))
        skips = [x]
        for block in self.down_blocks:
            x, res = block(x, temb, ctx, mask)
            skips.extend(res)
        if self.mid_block is not None:
            x = self.mid_block(x, temb, ctx, mask)
        for block in self.up_blocks:
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            # Upsample to the next skip's size: 2x normally, or the odd size the down path produced.
            size = tuple(skips[-1].shape[1:3]) if block.upsamplers is not None else None
            x = block(x, res, temb, ctx, mask, upsample_size=size)
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return x
