"""Full-corpus ranks, HR/NDCG/MRR and top-k against hand-computed rankings."""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

import recsys_jax  # noqa: F401
from recsys_jax.eval.metrics import (
    compute_ranks,
    finalize_metrics,
    metrics_from_ranks,
    ranking_metrics,
    top_k,
)

_XLA_BASE = os.environ.get("XLA_FLAGS", "")  # the session's flags (tests/conftest.py)

# 1-D embeddings so scores are easy to read: user = [1] scores item i as table[i].
#            pad  1    2    3    4    5    6
SCORES = [0.0, 0.9, 0.5, 0.7, 0.5, 0.1, 0.5]
TABLE = jnp.asarray(np.array(SCORES, np.float32)[:, None])
USER = jnp.ones((1, 1), jnp.float32)


def _rank(target, exclude=None, ties="pessimistic"):
    ex = None if exclude is None else jnp.asarray([exclude], jnp.int32)
    return float(compute_ranks(USER, jnp.asarray([target], jnp.int32), TABLE, ex, ties=ties)[0])


def test_ranks_without_ties():
    assert _rank(1) == 1  # 0.9 is best
    assert _rank(3) == 2  # only 0.9 above 0.7
    assert _rank(5) == 6  # lowest of 6 items; padding row never counts


def test_ranks_with_ties():
    # Items 2, 4, 6 all score 0.5, behind items 1 (0.9) and 3 (0.7).
    assert _rank(4, ties="optimistic") == 3
    assert _rank(4, ties="pessimistic") == 5
    assert _rank(4, ties="average") == 4


def test_exclusion_removes_items_and_duplicates_count_once():
    assert _rank(3, exclude=[1]) == 1
    assert _rank(4, exclude=[1, 1, 0, 6, 6]) == 3  # 1 and 6 gone: ahead are 3 and tie 2
    assert _rank(4, exclude=[1, 6], ties="optimistic") == 2
    assert _rank(5, exclude=[0, 0]) == 6  # zeros in the exclusion list mean "no item"
    assert _rank(3, exclude=[3, 2]) == float("inf")  # an excluded target cannot be retrieved
    assert _rank(0) == float("inf")  # padding target


def test_metrics_from_ranks_by_hand():
    ranks = jnp.asarray([1.0, 3.0, 12.0, np.inf])
    m = metrics_from_ranks(ranks, ks=(1, 5, 20))
    assert float(m["hr@1"]) == pytest.approx(1 / 4)
    assert float(m["hr@5"]) == pytest.approx(2 / 4)
    assert float(m["hr@20"]) == pytest.approx(3 / 4)
    assert float(m["ndcg@5"]) == pytest.approx((1.0 + 1 / np.log2(4)) / 4)
    assert float(m["ndcg@20"]) == pytest.approx((1.0 + 0.5 + 1 / np.log2(13)) / 4)
    assert float(m["mrr"]) == pytest.approx((1 + 1 / 3 + 1 / 12) / 4)
    weighted = metrics_from_ranks(ranks, ks=(1,), weights=jnp.asarray([0.0, 1.0, 1.0, 0.0]))
    assert float(weighted["hr@1"]) == 0.0 and float(weighted["mrr"]) == pytest.approx((1 / 3 + 1 / 12) / 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        metrics_from_ranks(ranks, ks=(0,))


def _random_problem(seed, b=6, n=40, d=5, m=7):
    rs = np.random.default_rng(seed)
    users = rs.normal(size=(b, d)).astype(np.float32)
    table = rs.normal(size=(n + 1, d)).astype(np.float32)
    exclude = rs.integers(0, n + 1, (b, m)).astype(np.int32)
    targets = rs.integers(1, n + 1, (b,)).astype(np.int32)
    return users, table, exclude, targets


def _numpy_ranks(users, table, exclude, targets):
    scores = users @ table.T
    ranks = []
    for b in range(len(users)):
        ok = np.ones(table.shape[0], bool)
        ok[0] = False
        ok[exclude[b]] = False
        if not ok[targets[b]]:
            ranks.append(np.inf)
            continue
        ranks.append(1 + np.sum(ok & (scores[b] > scores[b, targets[b]])))
    return np.array(ranks)


def test_ranks_match_numpy_and_top_k_agrees_with_hit_rate():
    users, table, exclude, targets = _random_problem(0)
    ranks = np.asarray(compute_ranks(*map(jnp.asarray, (users, targets, table, exclude))))
    np.testing.assert_array_equal(ranks, _numpy_ranks(users, table, exclude, targets))
    k = 10
    scores, ids = top_k(jnp.asarray(users), jnp.asarray(table), k, jnp.asarray(exclude))
    scores, ids = np.asarray(scores), np.asarray(ids)
    full = users @ table.T
    for b in range(len(users)):
        allowed = [i for i in range(1, table.shape[0]) if i not in set(exclude[b])]
        want = sorted(allowed, key=lambda i: -full[b, i])[:k]
        np.testing.assert_array_equal(ids[b], want)
        np.testing.assert_allclose(scores[b], full[b, want], rtol=1e-5)
        assert (ranks[b] <= k) == (targets[b] in ids[b])


def test_top_k_fills_missing_slots_with_padding():
    # Items 1-3 excluded: left are 4 (0.5), 6 (0.5) and 5 (0.1); the 4th slot cannot be filled.
    scores, ids = top_k(USER, TABLE, 4, jnp.asarray([[1, 2, 3]], jnp.int32))
    ids, scores = np.asarray(ids)[0], np.asarray(scores)[0]
    assert set(ids[:2]) == {4, 6} and ids[2] == 5 and ids[3] == 0
    np.testing.assert_allclose(scores[:3], [0.5, 0.5, 0.1], rtol=1e-6)
    assert np.isneginf(scores[3])
    scores, ids = top_k(USER, TABLE, 6, jnp.asarray([[1, 2, 3, 4]], jnp.int32))
    np.testing.assert_array_equal(np.asarray(ids)[0, 2:], [0, 0, 0, 0])
    assert np.all(np.isneginf(np.asarray(scores)[0, 2:]))
    with pytest.raises(ValueError, match="k must be in"):
        top_k(USER, TABLE, 7)


def test_ranking_metrics_accumulate_over_batches():
    users, table, exclude, targets = _random_problem(1, b=8)
    targets[5] = 0  # a padded example: weight 0
    u, t, tab, ex = (jnp.asarray(a) for a in (users, targets, table, exclude))
    whole = finalize_metrics(ranking_metrics(u, t, tab, ex, ks=(5, 20)))
    parts = [ranking_metrics(u[s], t[s], tab, ex[s], ks=(5, 20)) for s in (slice(0, 3), slice(3, 8))]
    summed = finalize_metrics({k: parts[0][k] + parts[1][k] for k in parts[0]})
    assert whole.keys() == summed.keys() == {"hr@5", "ndcg@5", "hr@20", "ndcg@20", "mrr"}
    for key in whole:
        assert whole[key] == pytest.approx(summed[key], rel=1e-6)
    ranks = _numpy_ranks(users, table, exclude, targets)[targets > 0]
    assert whole["hr@20"] == pytest.approx(np.mean(ranks <= 20))
    assert whole["mrr"] == pytest.approx(np.mean(1 / ranks), rel=1e-6)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"user_emb \[B, D\]"):
        compute_ranks(jnp.ones((2, 3)), jnp.ones((2,), jnp.int32), jnp.ones((5, 4)))
    with pytest.raises(ValueError, match="exclude_ids"):
        top_k(jnp.ones((2, 4)), jnp.ones((5, 4)), 2, jnp.ones((3, 2), jnp.int32))
    with pytest.raises(ValueError, match="ties"):
        compute_ranks(USER, jnp.asarray([1]), TABLE, ties="random")


SHARDED = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import recsys_jax
    from recsys_jax.eval.metrics import compute_ranks, top_k
    assert jax.device_count() == 8, jax.devices()
    rs = np.random.default_rng(0)
    users = rs.normal(size=(4, 6)).astype(np.float32)
    table = rs.normal(size=(64, 6)).astype(np.float32)  # 63 items + padding, 8 rows per device
    exclude = rs.integers(0, 64, (4, 5)).astype(np.int32)
    targets = rs.integers(1, 64, (4,)).astype(np.int32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded_table = jax.device_put(table, NamedSharding(mesh, P("data", None)))
    assert len(sharded_table.addressable_shards) == 8
    s1, i1 = top_k(jnp.asarray(users), sharded_table, 10, jnp.asarray(exclude))
    s0, i0 = top_k(jnp.asarray(users), jax.device_put(table, jax.devices()[0]), 10, jnp.asarray(exclude))
    np.testing.assert_array_equal(np.asarray(i1), np.asarray(i0))
    np.testing.assert_allclose(np.asarray(s1), np.asarray(s0), rtol=1e-6)
    r1 = compute_ranks(jnp.asarray(users), jnp.asarray(targets), sharded_table, jnp.asarray(exclude))
    r0 = compute_ranks(jnp.asarray(users), jnp.asarray(targets), jnp.asarray(table), jnp.asarray(exclude))
    np.testing.assert_array_equal(np.asarray(r1), np.asarray(r0))
    print("OK")
    """
)


def test_top_k_and_ranks_with_row_sharded_table():
    env = dict(os.environ, XLA_FLAGS=_XLA_BASE + " --xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
