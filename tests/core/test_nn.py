"""core_jax.nn: attention against a direct numpy computation, its implementation choice, typed configs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core_jax import nn
from core_jax.nn import attention, attention_implementation, config_from_dict, take_rows


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
    ("cpu", jnp.bfloat16, 64, False, "cpu"),   # core_jax.nn.cpu_attention
    ("cpu", jnp.float32, 64, True, "xla"),
    ("tpu", jnp.bfloat16, 64, False, "xla"),
])
def test_attention_implementation_is_decided_up_front(platform, dtype, head_dim, masked, expected):
    assert attention_implementation(platform, dtype, head_dim, masked=masked) == expected


def test_causal_attention_on_cpu_stays_with_jax_and_explicit_cpu_refuses_a_mask():
    assert attention_implementation("cpu", jnp.float32, 64, masked=False, causal=True) == "xla"
    assert attention_implementation("cuda", jnp.bfloat16, 64, masked=False, causal=True) == "cudnn"
    x = jnp.zeros((1, 4, 48))
    with pytest.raises(ValueError, match="implementation='cpu'"):
        attention(x, x, x, 3, is_causal=True, implementation="cpu")


@pytest.mark.parametrize("heads, platform, causal, expected", [
    (3, "cuda", False, "cudnn"), (4, "cuda", False, "xla"), (3, "cpu", False, "cpu"), (3, "cpu", True, "xla")])
def test_attention_passes_the_decision_to_jax(monkeypatch, heads, platform, causal, expected):
    seen = []
    monkeypatch.setattr(nn, "_platform", lambda: platform)
    monkeypatch.setattr(nn.jax.nn, "dot_product_attention",
                        lambda q, *a, implementation, **kw: seen.append(implementation) or q)
    monkeypatch.setattr(nn, "cpu_attention", lambda q, k, v: seen.append("cpu") or q)
    x = jnp.zeros((1, 4, 48), jnp.bfloat16)  # 3 heads of 16, or 4 heads of 12
    attention(x, x, x, heads, is_causal=causal)
    assert seen == [expected]


@pytest.mark.parametrize("t, s", [(7, 5), (1024, 77), (768, 768)])  # the last: query blocks
def test_cpu_attention_matches_jax_forward_and_backward(t, s):
    g = np.random.default_rng(2)
    q = jnp.asarray(g.standard_normal((2, t, 2, 8)), jnp.float32)
    k, v = (jnp.asarray(g.standard_normal((2, s, 2, 8)) * 2, jnp.float32) for _ in range(2))
    cot = jnp.asarray(g.standard_normal(q.shape), jnp.float32)

    def grads(f):
        out, vjp = jax.vjp(jax.jit(f), q, k, v)
        return (out, *vjp(cot))

    ours = grads(nn.cpu_attention)
    want = grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"))
    # output, then the gradients of q, k, v. Two float32 code paths (different dot blocking and exp kernels):
    # on a 2-core AMD AVX2 machine one 768-key row differed by 5.4e-5 on values of magnitude ~2 (v has std 2)
    for a, b in zip(ours, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    if min(t, s) > nn.CHUNK_ABOVE:
        np.testing.assert_allclose(ours[0], nn._softmax_attention(q, k, v), rtol=1e-6, atol=1e-6)


def test_attention_in_bf16_matches_the_reference():
    g = np.random.default_rng(1)
    q, k, v = (g.standard_normal((2, 7, 32)).astype(np.float32) for _ in range(3))
    got = attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), 2)
    want = _reference_attention(*(np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32) for a in (q, k, v)), 2)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=2e-2)


@dataclasses.dataclass(frozen=True)
class _Config:
    width: int = 8
    eps: float = 1e-5
    act: str = "gelu"


def test_config_from_dict_checks_types_and_skips_unknown_keys():
    assert config_from_dict(_Config, {"width": 4, "eps": 1, "architectures": ["X"], "act": None}, "C") == _Config(4, 1.0)
    with pytest.raises(TypeError, match=r"C.width: expected int, got '4'"):
        config_from_dict(_Config, {"width": "4"}, "C")
    with pytest.raises(TypeError, match="C.width: expected int, got True"):
        config_from_dict(_Config, {"width": True}, "C")
    with pytest.raises(TypeError, match="expected a dict"):
        config_from_dict(_Config, [1], "C")


def test_activation_names():
    x = jnp.linspace(-3, 3, 7)
    np.testing.assert_allclose(nn.activation("quick_gelu")(x), x / (1 + np.exp(-1.702 * np.asarray(x))), rtol=1e-6)
    with pytest.raises(ValueError, match="unsupported activation 'swiglu'; expected one of"):
        nn.activation("swiglu")


def test_take_rows_equals_take_and_its_gradient():
    rng = np.random.default_rng(0)
    for table_shape, idx_shape in (((9,), (3, 5, 5)), ((7, 4), (2, 6))):
        table = jnp.asarray(rng.normal(size=table_shape).astype(np.float32))
        idx = jnp.asarray(rng.integers(0, table_shape[0], idx_shape).astype(np.int32))
        ct = jnp.asarray(rng.normal(size=idx_shape + table_shape[1:]).astype(np.float32))
        np.testing.assert_array_equal(take_rows(table, idx), jnp.take(table, idx, axis=0))
        want = jax.grad(lambda t: jnp.sum(jnp.take(t, idx, axis=0) * ct))(table)
        got = jax.jit(jax.grad(lambda t: jnp.sum(take_rows(t, idx) * ct)))(table)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gelu_is_torchs_exact_gelu():
    torch = pytest.importorskip("torch")
    x = np.concatenate([np.linspace(-12, 12, 20001), [0.0, -0.5, 3.7]]).astype(np.float32)
    got = np.asarray(nn.gelu(jnp.asarray(x)))
    np.testing.assert_allclose(got, torch.nn.functional.gelu(torch.from_numpy(x)).numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got, np.asarray(jax.nn.gelu(x, approximate=False)), rtol=0, atol=2e-6)
    assert nn.activation("gelu") is nn.gelu
    g = jax.grad(lambda v: nn.gelu(v).sum())(jnp.asarray(x))  # the derivative too: Phi(x) + x phi(x)
    want = jax.grad(lambda v: jax.nn.gelu(v, approximate=False).sum())(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=0, atol=1e-5)
