"""Retriever.recommend with quotas (advertiser caps, category min/max) and several candidate sources."""

from collections import Counter

import numpy as np
import pytest

from recsys_jax import Retriever, UnknownItemError
from recsys_jax.serving.quotas import DynamicQuota

K = 24


@pytest.fixture(scope="module")
def retriever(recsys_run):
    r = Retriever.from_checkpoint(recsys_run.run_dir)
    rng = np.random.default_rng(0)
    items = r.item_map.keys[1:]
    # 9 advertisers, skewed so that caps bind; every 10th item has none
    adv = {item: (None if i % 10 == 0 else f"adv{min(rng.geometric(0.3), 9)}") for i, item in enumerate(items)}
    r.set_item_attributes(advertiser=adv)
    return r


def _history(recsys_run, user, n=12):
    ds = recsys_run.dataset
    rec = ds.sequence(user)
    return [ds.item_map.to_original(i) for i in rec["items"][-n:]], [int(t) for t in rec["timestamps"][-n:]]


def _labels(r, items, codes, vocab):
    names = {v: k for k, v in vocab.items()}
    return [names.get(int(codes[r.item_map.to_dense(i)])) for i in items]


def _full_ranking(r, history, ts):
    """Every item not in the history, by the model's score (ties: lower dense id): brute force."""
    rows = [r.prepare(history, ts)]
    u = r.user_vectors(rows)[0]
    scores = np.asarray(r.table)[1:] @ u
    order = np.lexsort((np.arange(len(scores)), -scores)) + 1
    hist = set(rows[0][0].tolist())
    return [int(d) for d in order if d not in hist]


def _greedy(r, ranking, k, cap, lo, hi):
    """Plain-Python quota walk: reserve slots for unmet minimums, then fill under the caps only."""
    adv, cat = r._advertiser, r._category
    chosen, n_adv, n_cat = [], Counter(), Counter()
    for reserve in (True, False):
        for d in ranking:
            if d in chosen or len(chosen) >= k:
                continue
            a, c = int(adv[d]), int(cat[d])
            if cap is not None and a >= 0 and n_adv[a] >= cap:
                continue
            if c in hi and n_cat[c] >= hi[c]:
                continue
            if reserve:
                deficit = sum(max(m - n_cat[x], 0) for x, m in lo.items())
                if k - len(chosen) - 1 < deficit - (c in lo and n_cat[c] < lo[c]):
                    continue
            chosen.append(d)
            n_adv[a] += 1
            n_cat[c] += 1
    pos = {d: i for i, d in enumerate(ranking)}
    return sorted(chosen, key=pos.__getitem__)


def test_items_have_categories_from_side_info(retriever):
    assert len(retriever.categories) == 6 and len(retriever.advertisers) == 9
    assert (retriever._category[1:] >= 0).all()


@pytest.mark.parametrize("user,cap", [(0, 1), (3, 2), (8, 3)])
def test_advertiser_cap_equals_greedy_walk_over_the_full_ranking(retriever, recsys_run, user, cap):
    history, ts = _history(recsys_run, user)
    items, scores = retriever.recommend(history, ts, k=K, quotas={"per_advertiser": cap})
    want = _greedy(retriever, _full_ranking(retriever, history, ts), K, cap, {}, {})
    assert [retriever.item_map.to_dense(i) for i in items] == want
    counts = Counter(a for a in _labels(retriever, items, retriever._advertiser, retriever.advertisers) if a)
    assert max(counts.values()) <= cap and len(items) == (K if cap > 1 else len(want))
    assert np.all(np.diff(scores) <= 0) and not set(items) & set(history)


@pytest.mark.parametrize("user", [1, 5])
def test_category_bounds_equal_greedy_walk(retriever, recsys_run, user):
    history, ts = _history(recsys_run, user)
    names = sorted(retriever.categories)
    ranking = _full_ranking(retriever, history, ts)
    top_cat = retriever._category[ranking[0]]
    top_name = next(n for n, c in retriever.categories.items() if c == top_cat)
    rare = [n for n in names if n != top_name][:2]
    quotas = {"categories": {top_name: {"max": 3}, rare[0]: {"min": 6}, rare[1]: {"min": 4, "max": 5}}}
    items, _ = retriever.recommend(history, ts, k=K, quotas=quotas, pool=retriever.num_items)
    codes = retriever.categories
    want = _greedy(retriever, ranking, K, None, {codes[rare[0]]: 6, codes[rare[1]]: 4},
                   {codes[top_name]: 3, codes[rare[1]]: 5, codes[rare[0]]: K})
    assert [retriever.item_map.to_dense(i) for i in items] == want
    counts = Counter(_labels(retriever, items, retriever._category, codes))
    assert counts[top_name] <= 3 and counts[rare[0]] >= 6 and 4 <= counts[rare[1]] <= 5 and len(items) == K
    # the default pool (4k plus each minimum category's best) gives a list meeting the same bounds
    items2, _ = retriever.recommend(history, ts, k=K, quotas=quotas)
    counts2 = Counter(_labels(retriever, items2, retriever._category, codes))
    assert counts2[top_name] <= 3 and counts2[rare[0]] >= 6 and 4 <= counts2[rare[1]] <= 5 and len(items2) == K


def test_quota_constraints_always_hold_on_random_quotas(retriever, recsys_run):
    rng = np.random.default_rng(1)
    names = sorted(retriever.categories)
    for trial in range(6):
        history, ts = _history(recsys_run, user=int(rng.integers(0, 100)))
        k = (10, K)[trial % 2]  # two sizes: few compilations
        cap = (2, 3)[trial % 2]
        bounds = {}
        for name in rng.choice(names, size=3, replace=False):
            lo = int(rng.integers(0, 4))
            bounds[str(name)] = {"min": lo, "max": int(lo + rng.integers(0, 6))}
        items, scores = retriever.recommend(history, ts, k=k, quotas={"per_advertiser": cap, "categories": bounds})
        again, _ = retriever.recommend(history, ts, k=k, quotas={"per_advertiser": cap, "categories": bounds})
        assert items == again  # deterministic
        assert len(set(items)) == len(items) and not set(items) & set(history)
        adv = Counter(a for a in _labels(retriever, items, retriever._advertiser, retriever.advertisers) if a)
        assert max(adv.values(), default=0) <= cap, (trial, adv)
        cat = Counter(_labels(retriever, items, retriever._category, retriever.categories))
        assert all(cat[n] <= b["max"] for n, b in bounds.items()), (trial, cat, bounds)


def test_non_binding_quotas_equal_the_plain_path(retriever, recsys_run):
    for user in (2, 9):
        history, ts = _history(recsys_run, user)
        plain, plain_scores = retriever.recommend(history, ts, k=K)
        for quotas in ({}, {"per_advertiser": K}, {"categories": {n: {"max": K} for n in retriever.categories}}):
            items, scores = retriever.recommend(history, ts, k=K, quotas=quotas)
            assert items == plain
            np.testing.assert_allclose(scores, plain_scores, rtol=1e-6)


def test_sources_split_k_dedup_and_exclude_history(retriever, recsys_run):
    history, ts = _history(recsys_run, user=4)
    plain, _ = retriever.recommend(history, ts, k=retriever.num_items)
    others = [i for i in retriever.item_map.keys[1:]]
    popular = others[::-1][:30]
    two_tower = [history[0]] + plain[2:40:2]  # overlaps the model and holds a history item
    items, scores, src = retriever.recommend(history, ts, k=12, sources={"two_tower": two_tower, "popular": popular})
    assert len(items) == 12 and len(set(items)) == 12 and not set(items) & set(history)
    assert Counter(src) == {"model": 4, "two_tower": 4, "popular": 4}  # equal values: an equal split
    # model first (ties: earlier source), each source's best distinct ids in its order
    assert items[:4] == plain[:4] and src[:4] == ["model"] * 4
    assert items[4:8] == [i for i in two_tower[1:] if i not in plain[:4]][:4]
    assert items[8:] == [i for i in popular if i not in items[:8] and i not in history][:4]
    want = [float(np.asarray(retriever.table)[retriever.item_map.to_dense(i)] @
                  retriever.user_vectors([retriever.prepare(history, ts)])[0]) for i in items]
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)
    # logged conversions move slots to the source that converts
    dq = DynamicQuota(["model", "two_tower", "popular"], half_life=100.0, floors={"model": 2})
    for t in range(50):
        dq.record("popular", 1000.0 + t, converted=True)
        dq.record("two_tower", 1000.0 + t, converted=False)
    items2, _, src2 = retriever.recommend(history, ts, k=12, sources={"two_tower": two_tower, "popular": popular},
                                          allocator=dq, now=1050.0)
    c = Counter(src2)
    assert c["popular"] > 4 and c["model"] >= 2 and len(items2) == 12
    # quotas apply to the merged list
    items3, _, src3 = retriever.recommend(history, ts, k=12, sources={"two_tower": two_tower, "popular": popular},
                                          quotas={"per_advertiser": 1})
    adv = Counter(a for a in _labels(retriever, items3, retriever._advertiser, retriever.advertisers) if a)
    assert max(adv.values()) <= 1 and len(items3) == 12 and len(src3) == 12


def test_batch_with_sources_and_quotas_equals_one_by_one(retriever, recsys_run):
    rows = [_history(recsys_run, user=u) for u in (0, 6)]
    pop = retriever.item_map.keys[1:21]
    q = {"per_advertiser": 2}
    items, scores, src = retriever.recommend([h for h, _ in rows], [t for _, t in rows], k=10, quotas=q,
                                             sources={"popular": [pop, pop[::-1]]})
    for i, ((h, t), p) in enumerate(zip(rows, (pop, pop[::-1]))):
        one, one_scores, one_src = retriever.recommend(h, t, k=10, quotas=q, sources={"popular": p})
        assert items[i] == one and src[i] == one_src
        np.testing.assert_allclose(scores[i], one_scores, rtol=1e-5, atol=1e-6)


def test_bad_quotas_and_sources_are_named(retriever, recsys_run):
    history, ts = _history(recsys_run, user=0)
    with pytest.raises(ValueError, match=r"quotas has unknown keys \['per_adv'\]"):
        retriever.recommend(history, ts, k=K, quotas={"per_adv": 2})
    with pytest.raises(ValueError, match=r"\['nope'\]: unknown category"):
        retriever.recommend(history, ts, k=K, quotas={"categories": {"nope": {"max": 2}}})
    with pytest.raises(ValueError, match=r"per_advertiser'\] must be an integer >= 1"):
        retriever.recommend(history, ts, k=K, quotas={"per_advertiser": 0})
    name = sorted(retriever.categories)[0]
    with pytest.raises(ValueError, match="min=3 > max=1"):
        retriever.recommend(history, ts, k=K, quotas={"categories": {name: {"min": 3, "max": 1}}})
    with pytest.raises(UnknownItemError, match=r"'zzz' at position 1 of sources\['popular'\]"):
        retriever.recommend(history, ts, k=K, sources={"popular": [history[0], "zzz"]})
    items, _, src = retriever.recommend(history, ts, k=K, sources={"popular": ["zzz"]}, unknown="skip")
    assert src == ["model"] * K
    with pytest.raises(ValueError, match="allocator sources"):
        retriever.recommend(history, ts, k=K, sources={"popular": []}, allocator=DynamicQuota(["a", "b"]))
