"""The multi-label sampled-softmax loss against a brute-force numpy computation on a tiny case."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recsys_jax.train.multilabel import (OUTSIDE_POOL, MultiLabelLossConfig, label_log_q, multi_label_loss,
                                         negative_cdf, sample_negatives)

N, D, T = 7, 4, 0.5
POOL = np.zeros((2, N + 1), bool)
POOL[0, 1:] = True  # label 0 (organic engagement): every item
POOL[1, 5:] = True  # label 1 (ads): items 5-7
COUNTS = np.array([[0, 5, 1, 0, 2, 3, 0, 1], [0, 0, 0, 0, 0, 4, 1, 0]])
WEIGHTS = np.array([1.0, 3.0], np.float32)


def _case(seed=0):
    rs = np.random.default_rng(seed)
    user = rs.normal(size=(2, 3, 2, D)).astype(np.float32)
    table = rs.normal(size=(N + 1, D)).astype(np.float32)
    table[0] = 0
    tgt = np.array([[2, 6, 5], [7, 0, 1]], np.int32)
    mask = np.array([[[1, 0], [1, 1], [0, 1]], [[0, 1], [1, 1], [0, 0]]], bool)  # [1, 1, :] has no target
    return user, table, tgt, mask


def _norm(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def brute_force(user, table, tgt, mask, negatives, log_q, cfg):
    """Loop over every position and label in float64."""
    u, e = _norm(user.astype(np.float64)), _norm(table.astype(np.float64))
    sums, counts = np.zeros(2), np.zeros(2)
    for b in range(user.shape[0]):
        for i in range(user.shape[1]):
            t = tgt[b, i]
            for lab in range(2):
                if not mask[b, i, lab] or t == 0:
                    continue
                if cfg.num_negatives:
                    corr = log_q[lab] if cfg.logq_correction else np.zeros(N + 1)
                    cands = [k for k in negatives[lab] if k != t]
                else:  # the exact softmax over the pool
                    corr = np.zeros(N + 1)
                    cands = [k for k in range(1, N + 1) if POOL[lab, k] and k != t]
                pos = u[b, i, lab] @ e[t] / T - corr[t]
                logits = [pos] + [u[b, i, lab] @ e[k] / T - corr[k] for k in cands]
                m = max(logits)
                sums[lab] += m + np.log(np.sum(np.exp(np.array(logits) - m))) - pos
                counts[lab] += 1
    if cfg.normalize == "label":
        return float(np.sum(WEIGHTS * sums / np.maximum(counts, 1))), counts
    return float(np.sum(WEIGHTS * sums) / np.sum(WEIGHTS * counts)), counts


CONFIGS = {
    "popularity": MultiLabelLossConfig(num_negatives=6, sampler="popularity"),
    "uniform": MultiLabelLossConfig(num_negatives=5, sampler="uniform"),
    "no_logq": MultiLabelLossConfig(num_negatives=6, sampler="popularity", logq_correction=False),
    "event_normalized": MultiLabelLossConfig(num_negatives=6, sampler="popularity", normalize="event",
                                             popularity_power=0.5),
    "exact": MultiLabelLossConfig(num_negatives=0, sampler="uniform"),
}


def _loss(cfg, user, table, tgt, mask, negatives, log_q):
    return multi_label_loss(jnp.asarray(user), jnp.asarray(tgt), jnp.asarray(mask), jnp.asarray(table),
                            None if negatives is None else jnp.asarray(negatives), jnp.asarray(log_q), WEIGHTS, cfg,
                            temperature=T, names=["engagement", "ad"])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_loss_equals_brute_force(name):
    cfg = CONFIGS[name]
    user, table, tgt, mask = _case()
    log_q = label_log_q(POOL, COUNTS, cfg)
    negatives = None
    if cfg.num_negatives:
        negatives = np.array(sample_negatives(jax.random.key(3), negative_cdf(log_q), cfg.num_negatives))
        negatives[0, 0], negatives[1, 0] = 2, 5  # accidental hits of targets: masked out
    loss, metrics = _loss(cfg, user, table, tgt, mask, negatives, log_q)
    want, counts = brute_force(user, table, tgt, mask, negatives, log_q, cfg)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(metrics["targets_engagement"]) == counts[0] == 2 and float(metrics["targets_ad"]) == counts[1] == 3


def test_a_position_never_contributes_to_a_label_it_lacks():
    cfg = CONFIGS["popularity"]
    user, table, tgt, mask = _case(1)
    log_q = label_log_q(POOL, COUNTS, cfg)
    neg = np.asarray(sample_negatives(jax.random.key(0), negative_cdf(log_q), cfg.num_negatives))
    grad = jax.grad(lambda u: _loss(cfg, u, table, tgt, mask, neg, log_q)[0])(jnp.asarray(user))
    trained = mask & (tgt > 0)[..., None]
    assert np.all(np.asarray(grad)[~trained] == 0) and np.abs(np.asarray(grad)[trained]).min() > 0
    other = user.copy()
    other[~trained] = np.random.default_rng(5).normal(size=other[~trained].shape)  # change what is not trained
    np.testing.assert_allclose(float(_loss(cfg, other, table, tgt, mask, neg, log_q)[0]),
                               float(_loss(cfg, user, table, tgt, mask, neg, log_q)[0]), rtol=1e-6)


def test_negatives_come_from_the_label_pool_with_the_sampling_distribution():
    cfg = MultiLabelLossConfig(sampler="popularity", popularity_power=1.0)
    log_q = label_log_q(POOL, COUNTS, cfg)
    q = np.exp(log_q.astype(np.float64)) * POOL
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(q[1, 5:], (COUNTS[1, 5:] + 1) / (COUNTS[1, 5:] + 1).sum(), rtol=1e-6)
    assert (log_q[~POOL] == OUTSIDE_POOL).all()
    draws = np.asarray(sample_negatives(jax.random.key(0), negative_cdf(log_q), 20000))
    assert POOL[np.arange(2)[:, None], draws].all()  # ads-only for the ad label, never padding
    for lab in range(2):
        freq = np.bincount(draws[lab], minlength=N + 1) / draws.shape[1]
        np.testing.assert_allclose(freq, q[lab], atol=0.015)
    uni = np.exp(label_log_q(POOL, None, MultiLabelLossConfig(sampler="uniform")).astype(np.float64)) * POOL
    np.testing.assert_allclose(uni[1, 5:], 1 / 3, rtol=1e-6)


def test_config_and_shape_errors():
    with pytest.raises(ValueError, match="sampler 'zipf'"):
        dataclasses.replace(CONFIGS["uniform"], sampler="zipf").validate()
    with pytest.raises(ValueError, match="needs per-label target counts"):
        label_log_q(POOL, None, CONFIGS["popularity"])
    user, table, tgt, mask = _case()
    log_q = label_log_q(POOL, COUNTS, CONFIGS["exact"])
    with pytest.raises(ValueError, match="shapes disagree"):
        _loss(CONFIGS["exact"], user, table, tgt, mask[..., :1], None, log_q)
    with pytest.raises(ValueError, match="pass negatives exactly"):
        _loss(CONFIGS["uniform"], user, table, tgt, mask, None, log_q)
