"""Neural-network primitives shared by every model of the project (canvas_jax's diffusion models and image / text
encoders, the shared text encoder in :mod:`core_jax.text`): activations by their transformers / diffusers names,
dense / embedding / layer-norm layers whose parameters carry logical axis names, multi-head attention through
``jax.nn.dot_product_attention``, and typed configs from transformers-style dicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
from flax import nnx

Dtype = Any


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU as torch computes it, ``x * (1 + erf(x / sqrt(2))) / 2``. ``jax.nn.gelu(approximate=False)`` goes
    through ``erfc``, whose XLA:CPU code evaluates both branches of its approximation: forward + backward of a
    GEGLU's ``hidden * gelu(gate)`` on 1M float32 take 2.1x as long (BENCHMARKS.md, "canvas_jax: training
    speed"). The two differ by < 1e-6."""
    return x * 0.5 * (1.0 + jax.lax.erf(x * 0.7071067811865476))


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": gelu,
    "relu": jax.nn.relu,
    "mish": jax.nn.mish,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # CLIP
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called ``name`` (the diffusers / transformers names)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def dense(in_features: int, out_features: int, axes: tuple[str | None, str | None], *, rngs: nnx.Rngs,
          use_bias: bool = True, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> nnx.Linear:
    """``nnx.Linear`` whose kernel carries the logical ``axes`` (in, out) and whose bias carries ``axes[1]``."""
    return nnx.Linear(
        in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)))


def layer_norm(dim: int, eps: float, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32) -> nnx.LayerNorm:
    """LayerNorm over the last axis, as ``torch.nn.LayerNorm`` (two-pass variance)."""
    return nnx.LayerNorm(
        dim, epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)))


_normal = nnx.initializers.normal(0.02)


def embed(num, dim, axes, *, rngs, dtype=None, param_dtype=jnp.float32) -> nnx.Embed:
    """``nnx.Embed`` (normal(0.02) init, as transformers) whose table carries the logical ``axes``."""
    return nnx.Embed(num, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                     embedding_init=nnx.with_partitioning(_normal, axes))


@jax.custom_vjp
def take_rows(table: jax.Array, indices: jax.Array) -> jax.Array:
    """``table[indices]`` (indices in range) whose gradient is one ``segment_sum`` over the indices.

    For many lookups into a small table (a bias per time bucket: ``[B, L, L]`` indices into ~100 values), the
    scatter-add JAX derives from a gather is ~4x slower on CPU than this (BENCHMARKS.md, HSTU time bias)."""
    return jnp.take(table, indices, axis=0, mode="clip")


def _take_rows_fwd(table, indices):
    return take_rows(table, indices), (indices, table.shape[0])


def _take_rows_bwd(res, grad):
    indices, n = res
    flat = grad.reshape((indices.size,) + grad.shape[indices.ndim:])
    return jax.ops.segment_sum(flat, indices.reshape(-1), num_segments=n), None


take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def _platform() -> str:
    """The default backend's platform: "cuda" or "rocm" for GPUs (cuDNN is CUDA's), else "cpu" / "tpu"."""
    backend = jax.default_backend()
    if backend != "gpu":
        return backend
    return "cuda" if "cuda" in jax.extend.backend.get_backend().platform_version.lower() else "rocm"


def attention_implementation(platform: str, dtype, head_dim: int, *, masked: bool, causal: bool = False) -> str:
    """How :func:`attention` computes, decided from static facts before tracing (so unsupported calls never reach
    cuDNN): ``"cudnn"`` (flash attention) where cuDNN supports the call on every GPU generation (a CUDA backend,
    bf16/fp16 inputs, no mask, a head dim that is a multiple of 8 and at most 128, the limit before Hopper);
    ``"cpu"`` (:func:`cpu_attention`) for calls on CPU with neither mask nor causality; else ``"xla"``
    (``jax.nn``'s XLA path)."""
    if platform == "cpu" and not masked and not causal:
        return "cpu"
    return ("cudnn" if platform == "cuda" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and not masked
            and head_dim % 8 == 0 and 0 < head_dim <= 128 else "xla")


# cpu_attention: QUERY_CHUNK queries at a time once queries and keys are both longer than CHUNK_ABOVE
QUERY_CHUNK, CHUNK_ABOVE = 256, 512


def _softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """[B, T, H, D] x [B, S, H, D] -> [B, T, H, D], float32 logits, normalised after the value product."""
    logits = jnp.einsum("bthd,bshd->bhts", q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype), k,
                        preferred_element_type=jnp.float32)
    p = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, -1, keepdims=True)))
    out = jnp.einsum("bhts,bshd->bthd", p, v.astype(jnp.float32))
    return (out / jnp.transpose(jnp.sum(p, -1), (0, 2, 1))[..., None]).astype(q.dtype)


def cpu_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Unmasked scaled dot-product attention on ``[B, T, H, D]`` heads, shaped for XLA:CPU: the softmax is
    normalised on the ``[B, T, H, D]`` output instead of the ``[B, H, T, S]`` probabilities (one pass less over
    the largest array, forward and backward), and where queries and keys are both longer than ``CHUNK_ABOVE``
    the queries go ``QUERY_CHUNK`` at a time so that each block's logits stay in cache. Against ``jax.nn``'s
    XLA path on 2 CPU cores: SD-1.5's 1,024-token self-attention ~2.2x faster forward, ~2.3x forward + backward
    (``benchmarks/attention_cpu.py``)."""
    b, t, h, d = q.shape
    if t <= CHUNK_ABOVE or k.shape[1] <= CHUNK_ABOVE or t % QUERY_CHUNK:
        return _softmax_attention(q, k, v)
    blocks = q.reshape(b, t // QUERY_CHUNK, QUERY_CHUNK, h, d).swapaxes(0, 1)
    out = jax.lax.map(lambda block: _softmax_attention(block, k, v), blocks)
    return out.swapaxes(0, 1).reshape(b, t, h, d)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, num_heads: int, *, mask: jax.Array | None = None,
              is_causal: bool = False, implementation: str | None = None) -> jax.Array:
    """Multi-head scaled dot-product attention: ``jax.nn.dot_product_attention`` or, on CPU, :func:`cpu_attention`.

    q: [B, T, H*D]; k, v: [B, S, H*D] -> [B, T, H*D]. ``mask`` is boolean, True = attend: either a
    key-padding mask [B, S] or anything broadcastable to [B, H, T, S]. ``implementation`` None picks by
    :func:`attention_implementation` (cuDNN flash attention on CUDA for unmasked bf16/fp16 with a supported
    head dim, :func:`cpu_attention` for unmasked calls on CPU, XLA otherwise); the XLA and CPU paths compute
    logits and softmax in float32.
    """
    if q.shape[-1] % num_heads or k.shape[-1] != q.shape[-1] or v.shape[-1] != q.shape[-1]:
        raise ValueError(f"attention: q/k/v feature sizes {q.shape[-1]}/{k.shape[-1]}/{v.shape[-1]} must be "
                         f"equal and divisible by num_heads={num_heads}")
    b, t, inner = q.shape
    d = inner // num_heads

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], num_heads, d).astype(q.dtype)

    if mask is not None:
        mask = jnp.asarray(mask, dtype=bool)
        if mask.ndim == 2:
            mask = mask[:, None, None, :]
    if implementation is None:
        implementation = attention_implementation(_platform(), q.dtype, d, masked=mask is not None,
                                                  causal=is_causal)
    if implementation == "cpu":
        if mask is not None or is_causal:
            raise ValueError("attention: implementation='cpu' (core_jax.nn.cpu_attention) takes no mask and no "
                             "is_causal; expected implementation=None or 'xla' for masked or causal attention")
        out = cpu_attention(heads(q), heads(k), heads(v))
    else:
        out = jax.nn.dot_product_attention(heads(q), heads(k), heads(v), mask=mask, is_causal=is_causal,
                                           implementation=implementation)
    return out.reshape(b, t, inner)



def config_from_dict(cls, values: Mapping[str, Any], what: str):
    """A frozen config dataclass from a transformers-style dict: known keys are type-checked, others ignored.

    Checkpoint ``config.json`` files carry many generic keys (``architectures``, dropout rates, ...) that
    do not change inference, so unknown keys are skipped rather than rejected.
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"{what}: expected a dict of config values, got {type(values).__name__}")
    kwargs = {}
    for field in dataclasses.fields(cls):
        value, kind = values.get(field.name), type(field.default)
        if value is None:  # absent or null: keep the default
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise TypeError(f"{what}.{field.name}: expected {kind.__name__}, got {value!r}")
        kwargs[field.name] = value
    return cls(**kwargs)
