"""IP-Adapter: image prompts through decoupled cross-attention (Ye et al. 2023), with diffusers' module names.

An image encoder (:mod:`canvas_jax.models.clip_vision`) turns the reference image into ``image_embeds``
[n, D] (plain IP-Adapter) or its penultimate hidden states [n, T, D] (IP-Adapter Plus). A projection turns them
into image tokens in the UNet's cross-attention space: :class:`ImageProjection` (one linear layer to N tokens,
LayerNorm) or the Plus :class:`IPAdapterPlusImageProjection` (a perceiver resampler). Every cross-attention
layer (``attn2``) gets its own keys / values for those tokens and adds their attention to the text attention:

    out = attn(q, k(text), v(text)) + scale * attn(q, to_k_ip(tokens), to_v_ip(tokens))

``attach_ip_adapter(unet, image_proj)`` puts the projection at ``unet.ip_adapter`` (an :class:`IPAdapter`) and
an :class:`IPAdapterAttention` at every ``...attn2.ip_adapter``; then::

    tokens = unet.ip_adapter(image_embeds)                  # [B, n_images, ...] -> [B, n_images * N, C]
    eps = unet(x, t, text_states, ip_tokens=tokens)

Every adapter parameter lies under a path element named ``ip_adapter``: ``nnx.PathContains("ip_adapter")``
selects exactly the trainable set of adapter training (base weights stay as they are). The per-layer scales
are :class:`IPScale` variables (not parameters): :func:`set_ip_adapter_scale` changes them without recompiling;
at scale 0 the UNet output is the base model's exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from canvas_jax.models.layers import Attention, FeedForward
from core_jax.nn import Dtype, attention, dense, layer_norm

PLUS_HEAD_DIM = 64  # diffusers infers a Plus resampler's heads as to_q rows // 64


class IPScale(nnx.Variable):
    """The run-time weight of one layer's image attention (a scalar variable: changing it does not recompile)."""


class IPAdapterAttention(nnx.Module):
    """The image key / value projections of one cross-attention layer (diffusers' ``to_k_ip`` / ``to_v_ip``,
    no bias) and its scale."""

    def __init__(self, context_dim: int, inner_dim: int, *, scale: float = 1.0, rngs: nnx.Rngs,
                 dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, use_bias=False)
        self.to_k_ip = dense(context_dim, inner_dim, ("embed", "heads"), **kw)
        self.to_v_ip = dense(context_dim, inner_dim, ("embed", "heads"), **kw)
        self.scale = IPScale(jnp.asarray(scale, jnp.float32))

    def __call__(self, q: jax.Array, tokens: jax.Array, heads: int) -> jax.Array:
        out = attention(q, self.to_k_ip(tokens), self.to_v_ip(tokens), heads)
        return self.scale[...].astype(out.dtype) * out


class ImageProjection(nnx.Module):
    """Plain IP-Adapter: ``image_embeds`` (linear, D -> N x C) reshaped to N tokens, then ``norm`` (LayerNorm)."""

    def __init__(self, image_embed_dim: int, cross_attention_dim: int, num_tokens: int = 4, *, rngs: nnx.Rngs,
                 dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.num_tokens = num_tokens
        self.image_embeds = dense(image_embed_dim, num_tokens * cross_attention_dim, ("embed", "mlp"), **kw)
        self.norm = layer_norm(cross_attention_dim, 1e-5, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, D] -> [B, N, C]."""
        return self.norm(self.image_embeds(x).reshape(x.shape[0], self.num_tokens, -1))


class IPAdapterPlusImageProjectionBlock(nnx.Module):
    """One perceiver layer: the latents attend to [ln0(features); ln1(latents)], then a GELU MLP, both residual."""

    def __init__(self, dim: int, *, dim_head: int, heads: int, ffn_ratio: float, rngs: nnx.Rngs, **dt):
        self.ln0 = layer_norm(dim, 1e-5, rngs=rngs, **dt)
        self.ln1 = layer_norm(dim, 1e-5, rngs=rngs, **dt)
        self.attn = Attention(dim, heads=heads, head_dim=dim_head, out_bias=False, rngs=rngs, **dt)
        self.ff = nnx.List([layer_norm(dim, 1e-5, rngs=rngs, **dt),
                            FeedForward(dim, mult=ffn_ratio, activation_fn="gelu", bias=False, rngs=rngs, **dt)])

    def __call__(self, x: jax.Array, latents: jax.Array) -> jax.Array:
        residual = latents
        latents = self.ln1(latents)
        context = jnp.concatenate([self.ln0(x), latents], axis=-2)
        latents = self.attn(latents, context) + residual
        return self.ff[1](self.ff[0](latents)) + latents


class IPAdapterPlusImageProjection(nnx.Module):
    """IP-Adapter Plus resampler (diffusers' ``IPAdapterPlusImageProjection``): learned ``latents`` (queries),
    ``proj_in`` of the image features, ``layers`` of perceiver attention + MLP, ``proj_out`` and ``norm_out``.

    embed_dims: image feature size (the encoder's hidden size); hidden_dims: the resampler width; output_dims:
    the UNet's cross_attention_dim; num_queries: the number of image tokens.
    """

    def __init__(self, embed_dims: int = 768, output_dims: int = 1024, hidden_dims: int = 1280, depth: int = 4,
                 dim_head: int = 64, heads: int = 16, num_queries: int = 8, ffn_ratio: float = 4, *,
                 rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
        dt = dict(dtype=dtype, param_dtype=param_dtype)
        init = nnx.with_partitioning(nnx.initializers.normal(hidden_dims ** -0.5), (None, None, "embed"))
        self.latents = nnx.Param(init(rngs.params(), (1, num_queries, hidden_dims), param_dtype))
        self.proj_in = dense(embed_dims, hidden_dims, ("embed", "mlp"), rngs=rngs, **dt)
        self.proj_out = dense(hidden_dims, output_dims, ("mlp", "embed"), rngs=rngs, **dt)
        self.norm_out = layer_norm(output_dims, 1e-5, rngs=rngs, **dt)
        self.layers = nnx.List([
            IPAdapterPlusImageProjectionBlock(hidden_dims, dim_head=dim_head, heads=heads, ffn_ratio=ffn_ratio,
                                              rngs=rngs, **dt) for _ in range(depth)])
        self.dtype = dtype

    @property
    def num_tokens(self) -> int:
        return self.latents.shape[1]

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, T, embed_dims] -> [B, num_queries, output_dims]."""
        latents = jnp.broadcast_to(self.latents[...].astype(self.dtype or x.dtype),
                                   (x.shape[0], *self.latents.shape[1:]))
        x = self.proj_in(x)
        for block in self.layers:
            latents = block(x, latents)
        return self.norm_out(self.proj_out(latents))


class IPAdapter(nnx.Module):
    """The image projection of an IP-Adapter (``unet.ip_adapter``): image embeddings -> UNet image tokens."""

    def __init__(self, image_proj: ImageProjection | IPAdapterPlusImageProjection):
        self.image_proj = image_proj

    @property
    def plus(self) -> bool:
        """True when the projection reads the encoder's penultimate hidden states (Plus), not ``image_embeds``."""
        return isinstance(self.image_proj, IPAdapterPlusImageProjection)

    def __call__(self, image_embeds: jax.Array) -> jax.Array:
        """[B, n_images, D] (plain) or [B, n_images, T, D] (Plus) -> tokens [B, n_images * N, C]."""
        want = 4 if self.plus else 3
        if image_embeds.ndim != want:
            raise ValueError(f"IP-Adapter image embeddings: expected {want} dims ([batch, images, "
                             f"{'tokens, ' if self.plus else ''}features]), got shape {tuple(image_embeds.shape)}")
        b, n = image_embeds.shape[:2]
        tokens = self.image_proj(image_embeds.reshape(b * n, *image_embeds.shape[2:]))
        return tokens.reshape(b, n * tokens.shape[1], tokens.shape[2])


# ----------------------------------------------------------------------------------------------------
# Attaching to a UNet and setting scales.


def _transformer_attns(prefix: str, block) -> list[tuple[str, Attention]]:
    out = []
    for j, t2d in enumerate(getattr(block, "attentions", None) or []):
        for k, tb in enumerate(t2d.transformer_blocks):
            out.append((f"{prefix}.attentions.{j}.transformer_blocks.{k}.attn2", tb.attn2))
    return out


def cross_attention_layers(unet) -> list[tuple[str, Attention]]:
    """The UNet's cross-attention layers as (name, module) in diffusers' ``attn_processors`` order (down blocks,
    up blocks, then the mid block): the i-th one holds ``ip_adapter.{2i+1}.*`` in IP-Adapter files."""
    out = []
    for i, block in enumerate(unet.down_blocks):
        out += _transformer_attns(f"down_blocks.{i}", block)
    for i, block in enumerate(unet.up_blocks):
        out += _transformer_attns(f"up_blocks.{i}", block)
    if unet.mid_block is not None:
        out += _transformer_attns("mid_block", unet.mid_block)
    return out


def attach_ip_adapter(unet, image_proj: ImageProjection | IPAdapterPlusImageProjection, *, rngs: nnx.Rngs,
                      scale: float = 1.0, kv_from_text: bool = False) -> list[str]:
    """Give ``unet`` an IP-Adapter in place: ``unet.ip_adapter`` (the projection) and fresh ``to_k_ip`` /
    ``to_v_ip`` on every cross-attention layer (replacing any adapter already there; with ``kv_from_text``, copies
    of the layer's text ``to_k`` / ``to_v`` kernels, as the IP-Adapter paper initialises them). Returns the layer
    names."""
    kw = dict(dtype=unet.dtype, param_dtype=unet.conv_in.kernel[...].dtype)
    unet.ip_adapter = IPAdapter(image_proj)
    names = []
    for name, attn in cross_attention_layers(unet):
        context_dim, inner = attn.to_k.in_features, attn.to_k.out_features
        attn.ip_adapter = IPAdapterAttention(context_dim, inner, scale=scale, rngs=rngs, **kw)
        if kv_from_text:
            attn.ip_adapter.to_k_ip.kernel[...] = attn.to_k.kernel[...]
            attn.ip_adapter.to_v_ip.kernel[...] = attn.to_v.kernel[...]
        names.append(name)
    if not names:
        raise ValueError("attach_ip_adapter: the UNet has no cross-attention layers")
    return names


def remove_ip_adapter(unet) -> None:
    """Take the IP-Adapter out of ``unet`` (in place): the base model again."""
    unet.ip_adapter = None
    for _, attn in cross_attention_layers(unet):
        attn.ip_adapter = None


def _layer_scales(unet, scale) -> dict[str, float]:
    """diffusers' ``_maybe_expand_lora_scales`` for one adapter: a float, or a dict such as
    ``{"down": {"block_2": [0.0, 1.0]}, "mid": 0.5, "up": {"block_0": [0.0, 1.0, 0.0]}}`` -> {name prefix: scale};
    in a dict, parts not named get scale 0."""
    if not isinstance(scale, Mapping):
        return {"": float(scale)}
    unknown = sorted(set(scale) - {"down", "mid", "up"})
    if unknown:
        raise ValueError(f"IP-Adapter scale: unknown keys {unknown}; expected 'down', 'mid' and / or 'up'")
    scales = copy.deepcopy(dict(scale))
    out: dict[str, float] = {}
    mid = scales.get("mid", 0.0)
    if isinstance(mid, (list, tuple)):
        if len(mid) != 1:
            raise ValueError(f"IP-Adapter scale: expected 1 scale for mid, got {len(mid)}")
        mid = mid[0]
    if unet.mid_block is not None:
        out["mid_block"] = float(mid)
    for side, blocks in (("down", unet.down_blocks), ("up", unet.up_blocks)):
        with_attn = {i: len(b.attentions) for i, b in enumerate(blocks) if getattr(b, "attentions", None)}
        value = scales.get(side, 0.0)
        if not isinstance(value, Mapping):
            value = {f"block_{i}": value for i in with_attn}
        bad = sorted(k for k in value if k not in {f"block_{i}" for i in with_attn})
        if bad:
            raise ValueError(f"IP-Adapter scale: {side} has no cross-attention block(s) {bad}; blocks with "
                             f"cross-attention: {[f'block_{i}' for i in with_attn]}")
        for i, n in with_attn.items():
            v = value.get(f"block_{i}", 0.0)
            if isinstance(v, (list, tuple)):
                if len(v) == 1:
                    v = list(v) * n
                if len(v) != n:
                    raise ValueError(f"IP-Adapter scale: expected {n} scales for {side}.block_{i}, got {len(v)}")
            else:
                v = [v] * n
            for j, s in enumerate(v):
                out[f"{side}_blocks.{i}.attentions.{j}."] = float(s)
    return out


def set_ip_adapter_scale(unet, scale: float | Mapping) -> dict[str, float]:
    """Set the image-attention scale of every cross-attention layer: one float, or a per-block dict as diffusers'
    ``pipe.set_ip_adapter_scale`` takes (see :func:`_layer_scales`). Returns {layer name: scale}."""
    layers = [(n, a) for n, a in cross_attention_layers(unet) if a.ip_adapter is not None]
    if not layers:
        raise ValueError("set_ip_adapter_scale: no IP-Adapter is attached to the UNet (load one first)")
    prefixes = _layer_scales(unet, scale)
    applied = {}
    for name, attn in layers:
        value = next((s for p, s in prefixes.items() if name.startswith(p)), 0.0)
        attn.ip_adapter.scale[...] = jnp.asarray(value, jnp.float32)
        applied[name] = value
    return applied


def ip_adapter_scales(unet) -> dict[str, float]:
    """{cross-attention layer name: its current IP-Adapter scale}."""
    return {n: float(np.asarray(a.ip_adapter.scale[...])) for n, a in cross_attention_layers(unet)
            if a.ip_adapter is not None}
