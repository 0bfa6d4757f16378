"""HSTU specifics: time buckets, relative positions, and the layer against a naive loop."""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recsys_jax  # noqa: F401
from recsys_jax.models.hstu import HSTU, HSTUConfig, causal_blocks, relative_position_index, time_buckets


@nnx.jit
def _apply(model, ids, ts):
    return model(ids, ts, deterministic=True)


@pytest.mark.parametrize(
    "dt, expected",
    [
        (0, 0),  # log(max(1, 0)) = 0
        (1, 0),
        (-1, 0),
        (2, 2),  # ln 2 / 0.301 = 2.30
        (10, 7),  # 7.65
        (-10, 7),  # |dt|
        (60, 13),  # 13.60
        (3600, 27),  # 27.20
        (86_400, 37),  # 37.76
        (31_536_000, 57),  # one year: 57.42
        (1_000_000_000, 68),  # 68.85
    ],
)
def test_time_buckets_on_known_deltas(dt, expected):
    assert int(time_buckets(jnp.asarray(dt, jnp.int32), 128)) == expected
    assert expected == min(128, math.floor(math.log(max(1, abs(dt))) / 0.301))


def test_time_buckets_clip_at_num_buckets():
    got = np.asarray(time_buckets(jnp.asarray([3600, 86_400, 2_000_000_000], jnp.int32), 30))
    np.testing.assert_array_equal(got, [27, 30, 30])


def test_relative_position_index():
    idx = relative_position_index(3, 5)
    # max_seq_len - 1 + j - i
    np.testing.assert_array_equal(idx, [[4, 5, 6], [3, 4, 5], [2, 3, 4]])


def _naive_hstu(model: HSTU, ids: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Position-by-position numpy re-computation of the HSTU forward pass (one sequence)."""
    cfg = model.cfg
    h, dqk, dv, n = cfg.num_heads, cfg.attention_dim, cfg.linear_dim, cfg.max_seq_len

    def ln(v):
        return (v - v.mean()) / np.sqrt(v.var() + cfg.layer_norm_eps)

    def silu(v):
        return v / (1.0 + np.exp(-v))

    table = np.asarray(model.items.embedding[...], np.float64)
    pos_table = np.asarray(model.positions.embedding[...], np.float64)
    real = [i for i in range(len(ids)) if ids[i] > 0]
    x = {i: table[ids[i]] * math.sqrt(cfg.embed_dim) + pos_table[r] for r, i in enumerate(real)}
    for layer in model.layers:
        w = np.asarray(layer.uvqk[...], np.float64)
        wo = np.asarray(layer.out.kernel[...], np.float64)
        bo = np.asarray(layer.out.bias[...], np.float64)
        pos_w = np.asarray(layer.pos_bias[...], np.float64)
        ts_w = np.asarray(layer.time_bias[...], np.float64)
        proj = {i: silu(ln(x[i]) @ w) for i in real}
        u = {i: proj[i][: h * dv] for i in real}
        v = {i: proj[i][h * dv : 2 * h * dv].reshape(h, dv) for i in real}
        q = {i: proj[i][2 * h * dv : 2 * h * dv + h * dqk].reshape(h, dqk) for i in real}
        k = {i: proj[i][2 * h * dv + h * dqk :].reshape(h, dqk) for i in real}
        new = {}
        for ri, i in enumerate(real):
            attn = np.zeros((h, dv))
            # the query's time: its own, or ("next") the next real item's, its own at the last one
            t_i = int(ts[real[ri + 1]]) if cfg.time_bias_from == "next" and ri + 1 < len(real) else int(ts[i])
            for rj, j in enumerate(real[: ri + 1]):
                bucket = min(cfg.num_time_buckets, math.floor(math.log(max(1, abs(t_i - int(ts[j])))) / 0.301))
                bias = pos_w[n - 1 + rj - ri] + ts_w[bucket]
                for head in range(h):
                    a = silu(q[i][head] @ k[j][head] + bias) / n
                    attn[head] += a * v[j][head]
            new[i] = x[i] + (u[i] * ln(attn.reshape(-1))) @ wo + bo
        x = new
    out = np.zeros((len(ids), cfg.embed_dim))
    for i in real:
        out[i] = x[i] / max(np.linalg.norm(x[i]), 1e-6)
    return out


def test_hstu_matches_naive_loop_with_left_padding():
    cfg = HSTUConfig(embed_dim=8, num_layers=2, num_heads=2, attention_dim=4, linear_dim=3, max_seq_len=7, dropout=0.0)
    model = HSTU(cfg, num_items=20, rngs=nnx.Rngs(3))
    ids = np.array([[0, 0, 4, 17, 9, 4, 2]], np.int32)
    ts = np.array([[0, 0, 1_000, 1_003, 1_060, 90_000, 90_000]], np.int32)
    got = np.asarray(_apply(model, jnp.asarray(ids), jnp.asarray(ts)))[0]
    want = _naive_hstu(model, ids[0], ts[0])
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("blocks", [2, 3, 7, 50])
def test_causal_blocks_give_the_dense_outputs(blocks):
    cfg = HSTUConfig(embed_dim=8, num_layers=2, num_heads=2, attention_dim=4, linear_dim=3, max_seq_len=7, dropout=0.0,
                     time_bias_from="next", causal_blocks=blocks)
    model = HSTU(cfg, num_items=20, rngs=nnx.Rngs(3))
    ids = np.array([[0, 0, 4, 17, 9, 4, 2], [5, 6, 7, 8, 9, 10, 11]], np.int32)
    ts = np.array([[0, 0, 1_000, 1_003, 1_060, 90_000, 90_000], [1, 5, 90, 900, 9_000, 90_000, 900_000]], np.int32)
    got = np.asarray(_apply(model, jnp.asarray(ids), jnp.asarray(ts)))
    for row in range(2):
        np.testing.assert_allclose(got[row], _naive_hstu(model, ids[row], ts[row]), atol=2e-5)
    assert causal_blocks(200, 2) == [(0, 100), (100, 200)] and causal_blocks(7, 50) == [(i, i + 1) for i in range(7)]
    assert causal_blocks(10, 3) == [(0, 3), (3, 7), (7, 10)] and causal_blocks(5, 1) == [(0, 5)]


def test_time_bias_matters_and_position_bias_can_be_disabled():
    cfg = HSTUConfig(embed_dim=8, num_layers=1, attention_dim=4, linear_dim=4, max_seq_len=6, dropout=0.0)
    model = HSTU(cfg, num_items=10, rngs=nnx.Rngs(0))
    # Make the time bias large so a change of buckets is clearly visible.
    model.layers[0].time_bias[...] = jnp.linspace(-3.0, 3.0, cfg.num_time_buckets + 1)
    ids = jnp.asarray([[1, 2, 3, 4]], jnp.int32)
    near = _apply(model, ids, jnp.asarray([[0, 1, 2, 3]], jnp.int32))
    far = _apply(model, ids, jnp.asarray([[0, 10**4, 10**6, 10**8]], jnp.int32))
    np.testing.assert_allclose(near[:, 0], far[:, 0], atol=1e-6)  # one item: only dt = 0
    assert float(jnp.abs(near[:, 1:] - far[:, 1:]).max()) > 1e-3
    with pytest.raises(ValueError, match="needs timestamps"):
        _apply(model, ids, None)
    plain_cfg = HSTUConfig(**{**cfg.__dict__, "use_position_bias": False, "use_time_bias": False})
    plain = nnx.eval_shape(lambda: HSTU(plain_cfg, num_items=10, rngs=nnx.Rngs(0)))
    assert not hasattr(plain.layers[0], "pos_bias") and not hasattr(plain.layers[0], "time_bias")


@pytest.mark.parametrize("padding", ["left", "right"])
def test_time_bias_from_next_item_matches_naive_loop(padding):
    """``time_bias_from="next"`` (generative-recommenders): gaps from the next real item's timestamp."""
    cfg = HSTUConfig(embed_dim=8, num_layers=2, num_heads=2, attention_dim=4, linear_dim=3, max_seq_len=7, dropout=0.0,
                     time_bias_from="next")
    model = HSTU(cfg, num_items=20, rngs=nnx.Rngs(3))
    for layer in model.layers:
        layer.time_bias[...] = jnp.linspace(-3.0, 3.0, cfg.num_time_buckets + 1)
    real_ids, real_ts = [4, 17, 9, 4, 2], [1_000, 1_003, 1_060, 90_000, 9_000_000]
    pad = [0, 0]
    ids = np.array([pad + real_ids if padding == "left" else real_ids + pad], np.int32)
    ts = np.array([[7, 7] + real_ts if padding == "left" else real_ts + [7, 7]], np.int32)  # pad times ignored
    got = np.asarray(_apply(model, jnp.asarray(ids), jnp.asarray(ts)))[0]
    np.testing.assert_allclose(got, _naive_hstu(model, ids[0], ts[0]), atol=2e-5)
    own = HSTU(dataclasses.replace(cfg, time_bias_from="query"), num_items=20, rngs=nnx.Rngs(3))
    nnx.update(own, nnx.state(model))
    assert np.abs(np.asarray(_apply(own, jnp.asarray(ids), jnp.asarray(ts)))[0] - got).max() > 1e-3
    with pytest.raises(ValueError, match="time_bias_from"):
        HSTU(dataclasses.replace(cfg, time_bias_from="previous"), num_items=20, rngs=nnx.Rngs(0))


def test_attention_bias_is_position_plus_time_bias_with_their_gradients():
    """With both biases the layer looks up one [positions x buckets] table of sums: the bias equals
    pos_bias[rel] + time_bias[bucket] exactly, and the gradients are numpy's scatter-adds of the upstream grad."""
    from recsys_jax.models.hstu import HSTULayer

    cfg = HSTUConfig(embed_dim=8, attention_dim=8, linear_dim=8, max_seq_len=6, num_time_buckets=5, dropout=0.0)
    layer = HSTULayer(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    layer.pos_bias[...] = jnp.asarray(rng.normal(size=layer.pos_bias.shape), jnp.float32)
    layer.time_bias[...] = jnp.asarray(rng.normal(size=layer.time_bias.shape), jnp.float32)
    rel = relative_position_index(6, 6)
    buckets = jnp.asarray(rng.integers(0, 6, (3, 6, 6)), jnp.int32)
    pos, tb = np.asarray(layer.pos_bias[...]), np.asarray(layer.time_bias[...])
    np.testing.assert_array_equal(np.asarray(layer.attention_bias(rel, buckets)), pos[rel][None] + tb[np.asarray(buckets)])
    up = rng.normal(size=(3, 6, 6)).astype(np.float32)

    grads = nnx.grad(lambda m: jnp.sum(m.attention_bias(rel, buckets) * up))(layer)
    gp, gt = grads["pos_bias"][...], grads["time_bias"][...]
    want_p, want_t = np.zeros_like(pos), np.zeros_like(tb)
    np.add.at(want_p, np.broadcast_to(rel, up.shape), up)
    np.add.at(want_t, np.asarray(buckets), up)
    np.testing.assert_allclose(np.asarray(gp), want_p, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gt), want_t, atol=1e-5)
