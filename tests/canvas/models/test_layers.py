"""The shared layers against direct reference computations (numpy / torch)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import canvas_jax  # noqa: F401
from canvas_jax.models import layers
from canvas_jax.models.layers import attention, attention_implementation, nearest_resize, timestep_embedding

torch = pytest.importorskip("torch")


def _reference_attention(q, k, v, heads, mask=None, causal=False):
    b, t, inner = q.shape
    d = inner // heads
    split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, d).transpose(0, 2, 1, 3)  # noqa: E731
    logits = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(d)
    if mask is not None:
        logits = np.where(mask[:, None, None, :], logits, -np.inf)
    if causal:
        logits = np.where(np.tril(np.ones((t, k.shape[1]), bool)), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ split(v)).transpose(0, 2, 1, 3).reshape(b, t, inner)


def test_attention_with_padding_mask_and_causal():
    g = np.random.default_rng(0)
    q, k, v = (g.standard_normal((2, 5, 12)).astype(np.float32) for _ in range(3))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    got = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), 3, mask=mask)
    np.testing.assert_allclose(got, _reference_attention(q, k, v, 3, mask=mask), atol=1e-5)
    got = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), 3, is_causal=True)
    np.testing.assert_allclose(got, _reference_attention(q, k, v, 3, causal=True), atol=1e-5)
    with pytest.raises(ValueError, match="num_heads=5"):
        attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), 5)


@pytest.mark.parametrize("platform, dtype, head_dim, masked, expected", [
    ("cuda", jnp.bfloat16, 64, False, "cudnn"),
    ("cuda", jnp.float16, 128, False, "cudnn"),
    ("cuda", jnp.bfloat16, 8, False, "cudnn"),
    ("cuda", jnp.float32, 64, False, "xla"),   # cuDNN flash attention is half precision only
    ("cuda", jnp.bfloat16, 160, False, "xla"),  # above 128 (Hopper-only up to 256)
    ("cuda", jnp.bfloat16, 20, False, "xla"),   # not a multiple of 8 (SDXL's 5/10/20-wide heads in tiny tests)
    ("cuda", jnp.bfloat16, 64, True, "xla"),    # masked
    ("rocm", jnp.bfloat16, 64, False, "xla"),
    ("cpu", jnp.bfloat16, 64, False, "xla"),
    ("tpu", jnp.bfloat16, 64, False, "xla"),
])
def test_attention_implementation_is_decided_up_front(platform, dtype, head_dim, masked, expected):
    assert attention_implementation(platform, dtype, head_dim, masked=masked) == expected


@pytest.mark.parametrize("heads, platform, expected", [(3, "cuda", "cudnn"), (4, "cuda", "xla"), (3, "cpu", "xla")])
def test_attention_passes_the_decision_to_jax(monkeypatch, heads, platform, expected):
    seen = []
    monkeypatch.setattr(layers, "_platform", lambda: platform)
    monkeypatch.setattr(layers.jax.nn, "dot_product_attention",
                        lambda q, *a, implementation, **kw: seen.append(implementation) or q)
    x = jnp.zeros((1, 4, 48), jnp.bfloat16)  # 3 heads of 16, or 4 heads of 12
    attention(x, x, x, heads)
    assert seen == [expected]


def test_attention_in_bf16_matches_the_reference():
    g = np.random.default_rng(1)
    q, k, v = (g.standard_normal((2, 7, 32)).astype(np.float32) for _ in range(3))
    got = attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), 2)
    want = _reference_attention(*(np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32) for a in (q, k, v)), 2)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=2e-2)


@pytest.mark.parametrize("dim,flip,shift", [(32, True, 0), (33, False, 1)])
def test_timestep_embedding_matches_diffusers(dim, flip, shift):
    from diffusers.models.embeddings import get_timestep_embedding

    t = np.array([0.0, 1.0, 17.5, 999.0], np.float32)
    want = get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift).numpy()
    got = timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=flip, freq_shift=shift)
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("size,out", [((3, 5), (5, 9)), ((4, 4), (8, 8)), ((5, 3), (10, 7))])
def test_nearest_resize_matches_torch(size, out):
    x = np.random.default_rng(0).standard_normal((1, 2, *size)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=out, mode="nearest").numpy()
    got = nearest_resize(jnp.asarray(x.transpose(0, 2, 3, 1)), out)
    np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2), want)


@pytest.mark.parametrize("shape,groups", [((2, 5, 6, 8), 4), ((3, 7, 16), 16), ((2, 4, 4, 6), 1)])
def test_group_norm_matches_torch_forward_and_gradients(shape, groups):
    """Our per-channel-then-per-group statistics give torch.nn.functional.group_norm's values and gradients."""
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, shape).astype(np.float32)  # an offset mean: a one-pass variance would drift
    scale, bias, dy = rng.normal(size=shape[-1]), rng.normal(size=shape[-1]), rng.normal(size=shape)
    norm = layers.group_norm(shape[-1], groups, 1e-6, rngs=nnx.Rngs(0))
    norm.scale[...], norm.bias[...] = jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)

    def loss(m, x):
        return jnp.sum(m(x) * dy)

    (gm, gx), out = nnx.grad(loss, argnums=(0, 1))(norm, jnp.asarray(x)), norm(jnp.asarray(x))
    tx = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
    ts, tb = (torch.tensor(v, dtype=torch.float32, requires_grad=True) for v in (scale, bias))
    ref = torch.nn.functional.group_norm(tx, groups, ts, tb, eps=1e-6)
    (ref * torch.tensor(np.moveaxis(dy, -1, 1), dtype=torch.float32)).sum().backward()
    np.testing.assert_allclose(np.asarray(out), np.moveaxis(ref.detach().numpy(), 1, -1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(gx), np.moveaxis(tx.grad.numpy(), 1, -1), atol=1e-4)
    np.testing.assert_allclose(np.asarray(gm.scale[...]), ts.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(gm.bias[...]), tb.grad.numpy(), atol=1e-4)
