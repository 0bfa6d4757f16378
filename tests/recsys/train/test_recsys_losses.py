"""Sampled-softmax next-item loss: hand examples, logQ, masking, and a toy optimisation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import recsys_jax  # noqa: F401
from recsys_jax.models import build_model
from recsys_jax.train.losses import SampledSoftmaxConfig, log_q_from_counts, sampled_softmax_loss

KEY = jax.random.key(0)
# Only in-batch negatives over every position: deterministic, so it can be computed by hand.
IN_BATCH = SampledSoftmaxConfig(
    num_negatives=0, in_batch_negatives=True, num_in_batch_negatives=0, temperature=1.0, l2_normalize=False
)


def _hand_example():
    table = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [-1, 0]], np.float32)  # items 1..4
    users = np.array([[[1.0, 0.0], [0.0, 2.0], [0.5, 0.5], [3.0, 3.0]]], np.float32)  # [1, 4, 2]
    targets = np.array([[1, 2, 3, 2]], np.int32)  # item 2 twice: it must not be its own negative
    mask = np.array([[1, 1, 1, 0]], bool)  # last position does not count, nor is it a negative
    return users, targets, mask, table


_jit_loss = jax.jit(sampled_softmax_loss, static_argnames="cfg")


def _loss(users, targets, mask, table, cfg=IN_BATCH, log_q=None, rng=KEY):
    loss, metrics = _jit_loss(
        jnp.asarray(users), jnp.asarray(targets), jnp.asarray(mask), jnp.asarray(table), rng, cfg=cfg,
        log_q=None if log_q is None else jnp.asarray(log_q),
    )
    return float(loss), metrics


def _by_hand(users, targets, mask, table, log_q):
    u, t, m = users.reshape(-1, 2), targets.reshape(-1), mask.reshape(-1)
    losses = []
    for i in np.flatnonzero(m):
        pos = u[i] @ table[t[i]] - log_q[t[i]]
        negs = [u[i] @ table[t[j]] - log_q[t[j]] for j in np.flatnonzero(m) if t[j] != t[i]]
        logits = np.array([pos, *negs])
        losses.append(-(pos - np.log(np.exp(logits).sum())))
    return float(np.mean(losses))


def test_in_batch_loss_matches_hand_computation():
    users, targets, mask, table = _hand_example()
    got, metrics = _loss(users, targets, mask, table, cfg=IN_BATCH.__class__(**{**IN_BATCH.__dict__, "logq_correction": False}))
    # Position 0: pos <(1,0),(1,0)> = 1; negatives: items 2, 3 -> 0, 1.
    # Position 1: pos <(0,2),(0,1)> = 2; negatives: items 1, 3 -> 0, 2.
    # Position 2: pos <(.5,.5),(1,1)> = 1; negatives: items 1, 2 -> .5, .5.
    want = np.mean([
        -np.log(np.exp(1) / (np.exp(1) + np.exp(0) + np.exp(1))),
        -np.log(np.exp(2) / (np.exp(2) + np.exp(0) + np.exp(2))),
        -np.log(np.exp(1) / (np.exp(1) + 2 * np.exp(0.5))),
    ])
    assert got == pytest.approx(want, rel=1e-5)
    assert float(metrics["num_targets"]) == 3
    assert got == pytest.approx(_by_hand(users, targets, mask, table, np.zeros(5)), rel=1e-5)


def test_logq_correction_changes_the_loss_as_expected():
    users, targets, mask, table = _hand_example()
    counts = np.array([0, 10, 30, 60, 0])  # item 4 unseen: raised to 1 -> total 101
    log_q = log_q_from_counts(counts)
    np.testing.assert_allclose(np.exp(log_q[1:]).sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(log_q[1:], np.log(np.array([10, 30, 60, 1]) / 101), rtol=1e-6)
    plain, _ = _loss(users, targets, mask, table, cfg=SampledSoftmaxConfig(**{**IN_BATCH.__dict__, "logq_correction": False}))
    corrected, _ = _loss(users, targets, mask, table, log_q=log_q)
    assert corrected == pytest.approx(_by_hand(users, targets, mask, table, log_q), rel=1e-5)
    assert abs(corrected - plain) > 1e-2
    # A uniform log_q shifts every logit equally: no change.
    uniform, _ = _loss(users, targets, mask, table, log_q=np.full(5, np.log(0.25), np.float32))
    assert uniform == pytest.approx(plain, rel=1e-6)
    # Zero scores isolate the correction: every logit is -log q(item), so a rare positive among
    # popular negatives gets a small loss and a popular one a large loss (uncorrected: log 3 each).
    zero_users = np.zeros_like(users)
    full, _ = _loss(zero_users, targets, mask, table, log_q=log_q)
    q = {1: 10 / 101, 2: 30 / 101, 3: 60 / 101}
    want = np.mean([
        -np.log((1 / q[1]) / (1 / q[1] + 1 / q[2] + 1 / q[3])),
        -np.log((1 / q[2]) / (1 / q[2] + 1 / q[1] + 1 / q[3])),
        -np.log((1 / q[3]) / (1 / q[3] + 1 / q[1] + 1 / q[2])),
    ])
    assert full == pytest.approx(want, rel=1e-5)
    # Alone in the batch (other positions masked out, so not negatives either): nothing to contrast.
    one, _ = _loss(zero_users, targets, np.array([[1, 0, 0, 0]], bool), table, log_q=log_q)
    assert one == pytest.approx(0.0, abs=1e-6)


def test_positive_id_is_masked_out_of_uniform_negatives():
    # One item only: every uniform negative equals the positive and is dropped -> loss 0.
    table = np.array([[0, 0], [1, 0]], np.float32)
    users = np.ones((2, 3, 2), np.float32)
    targets = np.ones((2, 3), np.int32)
    cfg = SampledSoftmaxConfig(num_negatives=16, temperature=0.1)
    loss, metrics = _loss(users, targets, np.ones((2, 3), bool), table, cfg=cfg)
    assert loss == pytest.approx(0.0, abs=1e-6)
    assert float(metrics["in_sample_accuracy"]) == 1.0


def test_uniform_negatives_loss_with_two_items_is_bounded_by_hand_values():
    # Items 1 and 2; target 1. Each of the k negatives is item 2 (kept) or item 1 (masked), so the
    # loss is -log(e^a / (e^a + c e^b)) for some count c in 0..k; check it is one of those values.
    table = np.array([[0, 0], [1, 0], [0, 1]], np.float32)
    users = np.array([[[2.0, 1.0]]], np.float32)
    cfg = SampledSoftmaxConfig(num_negatives=8, temperature=1.0)
    loss, _ = _loss(users, np.array([[1]], np.int32), np.ones((1, 1), bool), table, cfg=cfg)
    a, b = 2.0 / np.sqrt(5), 1.0 / np.sqrt(5)
    candidates = [-np.log(np.exp(a) / (np.exp(a) + c * np.exp(b))) for c in range(9)]
    assert min(abs(loss - c) for c in candidates) < 1e-5


def test_masked_positions_do_not_affect_the_loss():
    rs = np.random.default_rng(0)
    table = rs.normal(size=(11, 4)).astype(np.float32)
    users = rs.normal(size=(2, 5, 4)).astype(np.float32)
    targets = rs.integers(1, 11, (2, 5)).astype(np.int32)
    mask = np.ones((2, 5), bool)
    mask[:, 3:] = False
    cfg = SampledSoftmaxConfig(num_negatives=7, in_batch_negatives=True, num_in_batch_negatives=0, logq_correction=False)
    a, _ = _loss(users, targets, mask, table, cfg=cfg)
    users2, targets2 = users.copy(), targets.copy()
    users2[:, 3:] = rs.normal(size=(2, 2, 4))
    targets2[:, 3:] = 0  # padding targets are ignored whatever the mask says
    b, _ = _loss(users2, targets2, mask | (targets2 == 0), table, cfg=cfg)
    assert a == pytest.approx(b, rel=1e-6)


def test_full_softmax_is_cross_entropy_over_every_item():
    users, targets, mask, table = _hand_example()
    cfg = SampledSoftmaxConfig(full_softmax=True, num_negatives=0, temperature=0.5, l2_normalize=False)
    got, metrics = _loss(users, targets, mask, table, cfg=cfg)
    u, t, m = users.reshape(-1, 2), targets.reshape(-1), mask.reshape(-1)
    want = []
    for i in np.flatnonzero(m):
        logits = table[1:] @ u[i] / 0.5  # items 1..4, never the padding row
        want.append(-(logits[t[i] - 1] - np.log(np.exp(logits).sum())))
    assert got == pytest.approx(float(np.mean(want)), rel=1e-5)
    assert float(metrics["num_targets"]) == 3 and float(metrics["dropped_targets"]) == 0


@pytest.mark.parametrize("cfg", [
    SampledSoftmaxConfig(full_softmax=True, num_negatives=0, temperature=0.5, l2_normalize=False),
    SampledSoftmaxConfig(num_negatives=0, in_batch_negatives=True, num_in_batch_negatives=0, logq_correction=False),
])
def test_gathering_real_positions_keeps_the_loss_and_counts_what_it_drops(cfg):
    users, targets, mask, table = _hand_example()
    full, _ = _loss(users, targets, mask, table, cfg=cfg)
    roomy, m = _loss(users, targets, mask, table, cfg=SampledSoftmaxConfig(**{**cfg.__dict__, "max_targets": 3}))
    assert roomy == pytest.approx(full, rel=1e-6) and float(m["dropped_targets"]) == 0
    tight, m = _loss(users, targets, mask, table, cfg=SampledSoftmaxConfig(**{**cfg.__dict__, "max_targets": 2}))
    assert float(m["num_targets"]) == 2 and float(m["dropped_targets"]) == 1
    # Only the first two real positions count (also as in-batch negatives): as if the third were masked.
    mask2 = mask.copy()
    mask2[0, 2] = False
    assert tight == pytest.approx(_loss(users, targets, mask2, table, cfg=cfg)[0], rel=1e-6)


def test_config_and_input_errors():
    users, targets, mask, table = _hand_example()
    with pytest.raises(ValueError, match="no negatives"):
        _loss(users, targets, mask, table, cfg=SampledSoftmaxConfig(num_negatives=0))
    with pytest.raises(ValueError, match="temperature"):
        _loss(users, targets, mask, table, cfg=SampledSoftmaxConfig(temperature=0.0))
    with pytest.raises(ValueError, match="full_softmax"):
        SampledSoftmaxConfig(full_softmax=True, in_batch_negatives=True).validate()
    with pytest.raises(ValueError, match="log_q"):
        _loss(users, targets, mask, table, cfg=IN_BATCH)
    with pytest.raises(ValueError, match="shapes disagree"):
        _loss(users, targets[:, :2], mask, table, cfg=SampledSoftmaxConfig())
    with pytest.raises(ValueError, match=r"item_table must be \[N \+ 1, 2\]"):
        _loss(users, targets, mask, table[:, :1], cfg=SampledSoftmaxConfig())
    with pytest.raises(ValueError, match="non-negative"):
        log_q_from_counts([0, -1, 2])


def test_loss_decreases_on_a_toy_problem():
    num_items, length = 12, 6
    model = build_model(
        "hstu",
        {"embed_dim": 16, "num_layers": 1, "attention_dim": 8, "linear_dim": 8, "max_seq_len": length, "dropout": 0.0},
        num_items,
        nnx.Rngs(0),
    )
    # Deterministic successor: the next item is always (item % N) + 1.
    starts = np.arange(1, 9)[:, None]
    seqs = ((starts + np.arange(length + 1)[None, :] - 1) % num_items + 1).astype(np.int32)
    ids, tgt = jnp.asarray(seqs[:, :-1]), jnp.asarray(seqs[:, 1:])
    ts = jnp.asarray(np.arange(length)[None].repeat(8, 0) * 60, jnp.int32)
    mask = tgt > 0
    counts = np.bincount(seqs[:, 1:].ravel(), minlength=num_items + 1)
    log_q = jnp.asarray(log_q_from_counts(counts))
    # Mixed negatives: uniform and in-batch (with logQ) together.
    cfg = SampledSoftmaxConfig(num_negatives=8, in_batch_negatives=True, num_in_batch_negatives=16, temperature=0.1)
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, rng):
        def loss_fn(model):
            u = model(ids, ts, deterministic=False)
            return sampled_softmax_loss(u, tgt, mask, model.item_embeddings(), rng, cfg, log_q)

        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        opt.update(model, grads)
        return loss

    fixed = jax.random.key(1)
    first = float(step(model, opt, fixed))
    for i in range(30):
        step(model, opt, jax.random.fold_in(KEY, i))
    # Same negatives as the first step, so the comparison is like for like.
    last = float(nnx.jit(lambda m: sampled_softmax_loss(
        m(ids, ts, deterministic=True), tgt, mask, m.item_embeddings(), fixed, cfg, log_q)[0])(model))
    assert np.isfinite(first) and last < 0.5 * first
