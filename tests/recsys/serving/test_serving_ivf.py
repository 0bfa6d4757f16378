"""The approximate (IVF) path: k-means lists, measured recall against exact, filters still hold."""

import numpy as np

from recsys_jax.serving import ItemIndex
from recsys_jax.serving.ivf import chunk_layout


def clustered(rng, n, d, clusters, noise=0.3):
    centers = rng.standard_normal((clusters, d)).astype(np.float32)
    return (centers[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d))).astype(np.float32), centers


def test_chunk_layout_covers_every_row_once_in_list_order():
    lists = np.array([2, 0, 2, 2, 1, -1, 0, 0, 2, -1, -1, -1])
    rows, clist = chunk_layout(lists, shards=2, chunk=2)
    per = len(rows) // 2
    real = rows[rows >= 0]
    assert sorted(real.tolist()) == [0, 1, 2, 3, 4, 6, 7, 8]
    for i, r in enumerate(rows):
        assert all(lists[x] == clist[i] for x in r if x >= 0)
        if np.any(r >= 0):
            assert (i < per) == all(x < 6 for x in r if x >= 0)  # a chunk stays in its shard
        else:
            assert clist[i] == -1  # an empty padding chunk is never probed


def test_recall_and_filters():
    rng = np.random.default_rng(0)
    x, centers = clustered(rng, 6000, 16, 40)
    q = (centers[rng.integers(0, 40, 16)] + 0.3 * rng.standard_normal((16, 16))).astype(np.float32)
    index = ItemIndex(x, block=1024).build_ivf(40, chunk=32)
    exact, _ = index.search(q, 50)
    approx, scores = index.search(q, 50, approximate=True, probe=40)
    recall = np.mean([len(set(a) & set(e)) / 50 for a, e in zip(approx, exact)])
    assert recall >= 0.9, recall
    assert np.all(np.diff(scores, axis=1) <= 0)
    # probing every chunk is exact
    full, _ = index.search(q, 50, approximate=True, probe=10**6)
    np.testing.assert_array_equal(full, exact)
    # filters apply on the approximate path too
    mask = rng.random(6000) < 0.5
    excl = [list(exact[i, :5]) for i in range(16)]
    got, _ = index.search(q, 50, approximate=True, probe=40, mask=mask, exclude=excl)
    assert np.all(mask[got[got >= 0]])
    assert not any(set(g) & set(e) for g, e in zip(got, excl))
