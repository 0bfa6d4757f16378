"""Building blocks of the canvas_jax diffusion models: convolutions and group norms with logical-axis annotations,
sinusoidal timestep embeddings, the ResNet block, down/upsampling, attention modules and the transformer block
(the primitives they share with the text encoders, such as ``dense`` and ``attention``, are in :mod:`core_jax.nn`).

Everything is NHWC (images) or [batch, tokens, features] (sequences). Attribute names follow diffusers
(``conv1``, ``time_emb_proj``, ``to_q``, ``to_out[0]``, ``ff.net[0].proj``...) so that
:mod:`core_jax.state_dict` maps parameters to diffusers keys without renaming.
Every module takes ``dtype`` (computation) and ``param_dtype`` (storage) and ``rngs``.
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from core_jax.nn import Dtype, activation, attention, dense, gelu, layer_norm

# ----------------------------------------------------------------------------------------------------
# Parameterised primitives with logical axis names.


def conv(in_features: int, out_features: int, kernel_size: int = 3, *, rngs: nnx.Rngs, stride: int = 1,
         padding: int | Sequence[tuple[int, int]] | None = None, use_bias: bool = True,
         dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> nnx.Conv:
    """2-D ``nnx.Conv`` (NHWC, HWIO kernel) with PyTorch-style symmetric ``padding`` ((k-1)//2 by default)."""
    if padding is None:
        padding = (kernel_size - 1) // 2
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return nnx.Conv(
        in_features, out_features, (kernel_size, kernel_size), strides=stride, padding=tuple(padding),
        use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)))


class GroupNorm(nnx.Module):
    """GroupNorm over the last (channel) axis of ``[B, ..., C]``, as ``torch.nn.GroupNorm`` (two-pass variance).

    Parameters ``scale`` and ``bias`` as ``nnx.GroupNorm``'s (same paths in checkpoints). The statistics are
    summed per channel over the spatial axes first (a reduction with channels minor) and then per group on the
    small ``[B, C]`` result: XLA:CPU runs that forward + backward ~3.7x faster than the group-shaped
    reduction of ``nnx.GroupNorm`` (batch 32, 32x32x64, 16 groups: 38.6 -> 10.4 ms of CPU), and GroupNorm is a
    large part of a VAE / UNet training step. Statistics are float32 whatever ``dtype``.
    """

    def __init__(self, num_channels: int, num_groups: int, eps: float, *, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32):
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels are not divisible into {num_groups} groups")
        self.num_groups, self.epsilon, self.dtype = num_groups, eps, dtype
        self.scale = nnx.Param(jnp.ones((num_channels,), param_dtype), out_sharding=("norm",))
        self.bias = nnx.Param(jnp.zeros((num_channels,), param_dtype), out_sharding=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, c, g = x.shape[0], x.shape[-1], self.num_groups
        axes = tuple(range(1, x.ndim - 1))
        count = math.prod(x.shape[1:-1]) * (c // g)

        def per_channel(stat: jax.Array) -> jax.Array:  # [B, C] channel sums -> group means broadcast to x
            group = jnp.sum(stat.reshape(b, g, c // g), axis=-1) / count
            return jnp.repeat(group, c // g, axis=-1).reshape(b, *(1,) * len(axes), c)

        xf = x.astype(jnp.float32)
        centred = xf - per_channel(jnp.sum(xf, axis=axes))
        inv = jax.lax.rsqrt(per_channel(jnp.sum(jnp.square(centred), axis=axes)) + self.epsilon)
        out = centred * inv * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return out.astype(self.dtype)


def group_norm(num_channels: int, num_groups: int, eps: float, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32) -> GroupNorm:
    """GroupNorm over the last (channel) axis, as ``torch.nn.GroupNorm`` (two-pass variance)."""
    return GroupNorm(num_channels, num_groups, eps, dtype=dtype, param_dtype=param_dtype)


class Identity(nnx.Module):
    """Parameter-free placeholder that keeps list indices aligned with the reference (e.g. a Dropout slot)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


# ----------------------------------------------------------------------------------------------------
# Timesteps.


def timestep_embedding(timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool = False, freq_shift: float = 1.0,
                       scale: float = 1.0, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding of a 1-D array of (possibly fractional) timesteps -> float32 [N, dim].

    Frequencies are ``exp(-log(max_period) * i / (dim//2 - freq_shift))``; the output is ``[sin, cos]``,
    or ``[cos, sin]`` with ``flip_sin_to_cos``; an odd ``dim`` is padded with one zero column.
    """
    timesteps = jnp.asarray(timesteps)
    if timesteps.ndim != 1:
        raise ValueError(f"timestep_embedding expects a 1-D array of timesteps, got shape {timesteps.shape}")
    half = dim // 2
    exponent = -np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = scale * timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    first, second = (jnp.cos(args), jnp.sin(args)) if flip_sin_to_cos else (jnp.sin(args), jnp.cos(args))
    emb = jnp.concatenate([first, second], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """MLP applied to a sinusoidal (or any vector) embedding: ``linear_1 -> act -> linear_2 [-> post_act]``."""

    def __init__(self, in_features: int, embed_dim: int, *, act_fn: str = "silu", post_act_fn: str | None = None,
                 rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.linear_1 = dense(in_features, embed_dim, ("embed", "mlp"), **kw)
        self.linear_2 = dense(embed_dim, embed_dim, ("mlp", "embed"), **kw)
        self.act = activation(act_fn)
        self.post_act = None if post_act_fn is None else activation(post_act_fn)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.linear_2(self.act(self.linear_1(x)))
        return x if self.post_act is None else self.post_act(x)


# ----------------------------------------------------------------------------------------------------
# Convolutional blocks.


class ResnetBlock2D(nnx.Module):
    """``norm1 -> act -> conv1 (+ time_emb_proj(act(temb))) -> norm2 -> act -> conv2``, plus the (1x1
    ``conv_shortcut`` when channels change) input, divided by ``output_scale_factor``."""

    def __init__(self, in_channels: int, out_channels: int | None = None, *, temb_channels: int | None,
                 groups: int = 32, groups_out: int | None = None, eps: float = 1e-6, act_fn: str = "silu",
                 output_scale_factor: float = 1.0, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32):
        out_channels = out_channels or in_channels
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = group_norm(in_channels, groups, eps, **kw)
        self.conv1 = conv(in_channels, out_channels, 3, **kw)
        self.time_emb_proj = None if temb_channels is None else dense(temb_channels, out_channels,
                                                                      ("mlp", "conv_out"), **kw)
        self.norm2 = group_norm(out_channels, groups_out or groups, eps, **kw)
        self.conv2 = conv(out_channels, out_channels, 3, **kw)
        self.conv_shortcut = None if in_channels == out_channels else conv(in_channels, out_channels, 1, **kw)
        self.act = activation(act_fn)
        self.output_scale_factor = output_scale_factor

    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        h = self.conv1(self.act(self.norm1(x)))
        if self.time_emb_proj is not None:
            if temb is None:
                raise ValueError("ResnetBlock2D was built with temb_channels but called without temb")
            h = h + self.time_emb_proj(self.act(temb))[:, None, None, :]
        h = self.conv2(self.act(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class Downsample2D(nnx.Module):
    """Stride-2 3x3 ``conv``. ``padding=0`` pads only bottom/right by one, as diffusers' VAE encoder does."""

    def __init__(self, channels: int, out_channels: int | None = None, *, padding: int = 1, rngs: nnx.Rngs,
                 dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
        pad = ((0, 1), (0, 1)) if padding == 0 else padding
        self.conv = conv(channels, out_channels or channels, 3, stride=2, padding=pad, rngs=rngs, dtype=dtype,
                         param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


def nearest_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour resize of NHWC ``x`` to spatial ``size`` with PyTorch's index rule
    ``src = floor(dst * in / out)``; exact 2x is a plain repeat."""
    h, w = x.shape[1], x.shape[2]
    if tuple(size) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)

    def index(n_in: int, n_out: int) -> np.ndarray:
        src = np.floor(np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)).astype(np.int64)
        return np.minimum(src, n_in - 1)

    return x[:, index(h, size[0])][:, :, index(w, size[1])]


class Upsample2D(nnx.Module):
    """Nearest 2x upsampling (or to ``output_size``) followed by a 3x3 ``conv``."""

    def __init__(self, channels: int, out_channels: int | None = None, *, rngs: nnx.Rngs,
                 dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
        self.conv = conv(channels, out_channels or channels, 3, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, output_size: tuple[int, int] | None = None) -> jax.Array:
        size = (2 * x.shape[1], 2 * x.shape[2]) if output_size is None else tuple(output_size)
        return self.conv(nearest_resize(x, size))


# ----------------------------------------------------------------------------------------------------
# Attention.


class Attention(nnx.Module):
    """Multi-head (self or cross) attention with diffusers' names: ``to_q``, ``to_k``, ``to_v``, ``to_out[0]``.

    ``context_dim`` is the feature size of the keys/values source (None: self-attention on ``query_dim``).
    """

    def __init__(self, query_dim: int, *, heads: int, head_dim: int, context_dim: int | None = None,
                 qkv_bias: bool = False, out_bias: bool = True, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32):
        inner = heads * head_dim
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.heads = heads
        self.to_q = dense(query_dim, inner, ("embed", "heads"), use_bias=qkv_bias, **kw)
        self.to_k = dense(context_dim or query_dim, inner, ("embed", "heads"), use_bias=qkv_bias, **kw)
        self.to_v = dense(context_dim or query_dim, inner, ("embed", "heads"), use_bias=qkv_bias, **kw)
        self.to_out = nnx.List([dense(inner, query_dim, ("heads", "embed"), use_bias=out_bias, **kw)])
        # IP-Adapter's decoupled image key/value branch (canvas_jax.models.ip_adapter.attach_ip_adapter sets it)
        self.ip_adapter = nnx.data(None)

    def __call__(self, x: jax.Array, context: jax.Array | None = None, *, mask: jax.Array | None = None,
                 ip_tokens: jax.Array | None = None) -> jax.Array:
        """x: [B, T, query_dim]; context: [B, S, context_dim] or None (self-attention) -> [B, T, query_dim].
        ``ip_tokens`` [B, N, context_dim]: image tokens for the IP-Adapter branch (``+= scale * attn(q, k_ip,
        v_ip)`` before ``to_out``); ignored without an adapter."""
        context = x if context is None else context
        q = self.to_q(x)
        out = attention(q, self.to_k(context), self.to_v(context), self.heads, mask=mask)
        if self.ip_adapter is not None and ip_tokens is not None:
            out = out + self.ip_adapter(q, ip_tokens, self.heads).astype(out.dtype)
        return self.to_out[0](out)


class SpatialSelfAttention(Attention):
    """Self-attention over the pixels of an NHWC map with a ``group_norm`` in front and a residual connection
    (the VAE mid-block attention): ``(x + attn(group_norm(x))) / rescale_output_factor``."""

    def __init__(self, channels: int, *, heads: int = 1, groups: int = 32, eps: float = 1e-6,
                 rescale_output_factor: float = 1.0, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32):
        if channels % heads:
            raise ValueError(f"SpatialSelfAttention: {channels} channels not divisible by {heads} heads")
        super().__init__(channels, heads=heads, head_dim=channels // heads, qkv_bias=True, rngs=rngs, dtype=dtype,
                         param_dtype=param_dtype)
        self.group_norm = group_norm(channels, groups, eps, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.rescale_output_factor = rescale_output_factor

    def __call__(self, x: jax.Array, context: jax.Array | None = None, *, mask: jax.Array | None = None) -> jax.Array:
        b, h, w, c = x.shape
        tokens = self.group_norm(x).reshape(b, h * w, c)
        out = super().__call__(tokens, mask=mask).reshape(b, h, w, c)
        return (out + x) / self.rescale_output_factor


# ----------------------------------------------------------------------------------------------------
# Transformer.


class CrossContext(NamedTuple):
    """What the cross-attention layers read: the text states [B, S, D] and, with an IP-Adapter, the projected image
    tokens [B, N, D] (None: text only). The UNet's blocks pass it through unchanged."""

    text: jax.Array
    ip_tokens: jax.Array | None = None


class GEGLU(nnx.Module):
    """``proj`` to twice the width, then ``hidden * gelu(gate)`` (exact, erf-based GELU)."""

    def __init__(self, dim: int, inner_dim: int, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32):
        self.proj = dense(dim, 2 * inner_dim, ("embed", "mlp"), rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden, gate = jnp.split(self.proj(x), 2, axis=-1)
        return hidden * gelu(gate)


class GELU(nnx.Module):
    """``proj`` then exact (erf-based) GELU: diffusers' ``GELU`` activation module."""

    def __init__(self, dim: int, inner_dim: int, *, use_bias: bool = True, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32):
        self.proj = dense(dim, inner_dim, ("embed", "mlp"), use_bias=use_bias, rngs=rngs, dtype=dtype,
                          param_dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return gelu(self.proj(x))


class FeedForward(nnx.Module):
    """``net = [GEGLU or GELU (dim -> mult*dim), dropout slot, Linear(mult*dim -> dim)]`` as in diffusers
    (``activation_fn`` "geglu" or "gelu"; ``bias`` for every linear layer)."""

    def __init__(self, dim: int, *, mult: float = 4, activation_fn: str = "geglu", bias: bool = True,
                 rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        inner = int(dim * mult)
        if activation_fn == "geglu" and bias:
            act = GEGLU(dim, inner, **kw)
        elif activation_fn == "gelu":
            act = GELU(dim, inner, use_bias=bias, **kw)
        else:
            raise ValueError(f"FeedForward: activation_fn={activation_fn!r} (bias={bias}) is not supported; expected "
                             "'geglu' (with bias) or 'gelu'")
        self.net = nnx.List([act, Identity(), dense(inner, dim, ("mlp", "embed"), use_bias=bias, **kw)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nnx.Module):
    """Pre-LayerNorm block: self-attention (``attn1``), cross-attention on the text (``attn2``), GEGLU MLP."""

    def __init__(self, dim: int, *, heads: int, head_dim: int, context_dim: int, eps: float = 1e-5,
                 rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = layer_norm(dim, eps, **kw)
        self.attn1 = Attention(dim, heads=heads, head_dim=head_dim, **kw)
        self.norm2 = layer_norm(dim, eps, **kw)
        self.attn2 = Attention(dim, heads=heads, head_dim=head_dim, context_dim=context_dim, **kw)
        self.norm3 = layer_norm(dim, eps, **kw)
        self.ff = FeedForward(dim, **kw)

    def __call__(self, x: jax.Array, context, *, context_mask: jax.Array | None = None) -> jax.Array:
        """``context``: the text states [B, S, D], or a :class:`CrossContext` (text states plus IP-Adapter image
        tokens for ``attn2``)."""
        text, ip_tokens = context if isinstance(context, CrossContext) else (context, None)
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), text, mask=context_mask, ip_tokens=ip_tokens)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nnx.Module):
    """Spatial transformer on an NHWC map: ``norm`` (GroupNorm), ``proj_in`` (1x1 conv, or linear with
    ``use_linear_projection``), ``transformer_blocks``, ``proj_out``, plus the input as residual."""

    def __init__(self, channels: int, *, heads: int, context_dim: int, num_layers: int = 1, groups: int = 32,
                 use_linear_projection: bool = False, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 param_dtype: Dtype = jnp.float32):
        if channels % heads:
            raise ValueError(f"Transformer2DModel: {channels} channels not divisible by {heads} heads")
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm = group_norm(channels, groups, 1e-6, **kw)
        if use_linear_projection:
            self.proj_in = dense(channels, channels, (None, "embed"), **kw)
            self.proj_out = dense(channels, channels, ("embed", None), **kw)
        else:
            self.proj_in = conv(channels, channels, 1, **kw)
            self.proj_out = conv(channels, channels, 1, **kw)
        self.transformer_blocks = nnx.List([
            BasicTransformerBlock(channels, heads=heads, head_dim=channels // heads, context_dim=context_dim, **kw)
            for _ in range(num_layers)])

    def __call__(self, x: jax.Array, context: jax.Array, *, context_mask: jax.Array | None = None) -> jax.Array:
        b, h, w, c = x.shape
        # A 1x1 conv and a linear layer are the same map on NHWC data; only the kernel shape differs.
        tokens = self.proj_in(self.norm(x)).reshape(b, h * w, c)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, context_mask=context_mask)
        return self.proj_out(tokens.reshape(b, h, w, c)) + x
