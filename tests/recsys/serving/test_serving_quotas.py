"""Quotas and the dynamic source allocator against brute-force greedy references on random inputs."""

import numpy as np
import pytest

from recsys_jax.serving.quotas import DynamicQuota, allocate, apply_quotas, estimate_values, merge_sources


def greedy_quotas(ids, k, adv, cap, cat, lo, hi):
    """Plain-Python walk: reserve slots for unmet minimums, then fill under the caps only."""
    chosen, n_adv, n_cat = [], {}, {}
    for reserve in (True, False):
        for j in range(len(ids)):
            if ids[j] < 0 or j in chosen or len(chosen) >= k:
                continue
            a, c = adv[j], cat[j]
            if a >= 0 and cap is not None and n_adv.get(a, 0) >= cap:
                continue
            if c in hi and n_cat.get(c, 0) >= hi[c]:
                continue
            if reserve:
                deficit = sum(max(lo[x] - n_cat.get(x, 0), 0) for x in lo)
                helps = c in lo and n_cat.get(c, 0) < lo[c]
                if k - len(chosen) - 1 < deficit - helps:
                    continue
            chosen.append(j)
            n_adv[a] = n_adv.get(a, 0) + 1
            n_cat[c] = n_cat.get(c, 0) + 1
    chosen.sort()
    return chosen + [-1] * (k - len(chosen))


@pytest.mark.parametrize("seed", range(4))
def test_quotas_equal_greedy_reference_and_constraints_hold(seed):
    rng = np.random.default_rng(seed)
    b, c, k = 6, 40, 12
    ids = np.where(rng.random((b, c)) < 0.9, rng.integers(0, 1000, (b, c)), -1)
    adv = rng.integers(-1, 5, (b, c))
    cat = rng.integers(-1, 4, (b, c))
    lo, hi = {0: 3, 2: 2}, {0: 5, 1: 2, 3: 4}
    hi = {**hi, 2: k}
    cap = [None, 2, 3, 1][seed]
    got = apply_quotas(ids, k, advertiser=adv, per_advertiser=cap, category=cat, cat_min=lo, cat_max=hi)
    for r in range(b):
        ref = greedy_quotas(ids[r], k, adv[r], cap, cat[r], {x: v for x, v in lo.items()},
                            {0: 5, 1: 2, 2: k, 3: 4})
        assert got[r].tolist() == ref, (r, got[r], ref)
        pos = got[r][got[r] >= 0]
        assert np.all(np.diff(pos) > 0) and np.all(ids[r, pos] >= 0)  # rank order, real candidates
        if cap is not None:
            a = adv[r, pos]
            assert np.bincount(a[a >= 0]).max(initial=0) <= cap
        counts = np.bincount(cat[r, pos][cat[r, pos] >= 0], minlength=4)
        assert all(counts[x] <= m for x, m in hi.items())
        if cap is None:  # minimums hold whenever the list has enough of the category
            for x, m in lo.items():
                assert counts[x] >= min(m, np.sum((cat[r] == x) & (ids[r] >= 0)))


def test_quota_reserves_slots_for_a_minimum():
    ids = np.arange(6)[None]
    cat = np.array([[0, 0, 0, 0, 1, 1]])
    got = apply_quotas(ids, 3, category=cat, cat_min={1: 2})
    assert got.tolist() == [[0, 4, 5]]


def test_quota_bad_inputs():
    with pytest.raises(ValueError, match="minimums add up to 4 > k=3"):
        apply_quotas(np.arange(6)[None], 3, category=np.zeros((1, 6), int), cat_min={0: 2, 1: 2})
    with pytest.raises(ValueError, match="category 0: need 0 <= min <= max, got min=3 max=1"):
        apply_quotas(np.arange(6)[None], 3, category=np.zeros((1, 6), int), cat_min={0: 3}, cat_max={0: 1})
    with pytest.raises(ValueError, match="advertiser must be integers shaped like ids"):
        apply_quotas(np.arange(6)[None], 3, advertiser=np.zeros((1, 5), int), per_advertiser=1)


def dhondt_reference(k, values, floors, caps):
    slots = dict(floors)
    while sum(slots.values()) < k:
        open_ = [s for s in values if slots[s] < caps[s]]
        if not open_:
            break
        best = max(open_, key=lambda s: (values[s] / (slots[s] + 1), -list(values).index(s)))
        slots[best] += 1
    return slots


@pytest.mark.parametrize("seed", range(20))
def test_allocate_equals_slot_by_slot_greedy(seed):
    rng = np.random.default_rng(seed)
    names = [f"s{i}" for i in range(rng.integers(1, 6))]
    values = {s: float(rng.choice([0.0, 0.01, 0.02, 0.05, rng.random()])) for s in names}
    k = int(rng.integers(1, 60))
    caps = {s: int(rng.integers(0, 30)) for s in names}
    floors = {s: int(rng.integers(0, caps[s] + 1)) // 3 for s in names}
    if sum(floors.values()) > k:
        floors = {s: 0 for s in names}
    got = allocate(k, values, floors, caps)
    assert got == dhondt_reference(k, values, floors, caps)
    assert sum(got.values()) == min(k, sum(caps.values()))
    assert all(floors[s] <= got[s] <= caps[s] for s in names)


def test_allocate_is_proportional_and_validates():
    assert allocate(10, {"a": 0.3, "b": 0.1, "c": 0.1}) == {"a": 6, "b": 2, "c": 2}
    with pytest.raises(ValueError, match="floors add up to 6 > k=5"):
        allocate(5, {"a": 1.0, "b": 1.0}, floors={"a": 3, "b": 3})
    with pytest.raises(ValueError, match="unknown sources"):
        allocate(5, {"a": 1.0}, caps={"z": 3})


def test_merge_deduplicates_and_refills():
    cands = {"pop": [1, 2, 3, 4], "two_tower": [2, 5, 6], "text": [7]}
    ids, src = merge_sources(cands, {"pop": 2, "two_tower": 2, "text": 2}, 6,
                             values={"pop": 0.1, "two_tower": 0.3, "text": 0.2})
    assert ids == [2, 5, 7, 1, 3, 6] and src == ["two_tower", "two_tower", "text", "pop", "pop", "two_tower"]
    assert len(set(ids)) == len(ids)


def test_dynamic_quota_follows_logged_conversions():
    dq = DynamicQuota(["a", "b"], half_life=100.0, prior_weight=1.0)
    for t in range(200):
        dq.record("a", t, converted=t % 10 == 0)  # ~10%
        dq.record("b", t, converted=t % 50 == 0)  # ~2%
    v = dq.values(now=200)
    assert v["a"] > 3 * v["b"]
    cands = {"a": list(range(100)), "b": list(range(50, 150))}
    ids, src = dq.select(cands, 30, now=200)
    assert len(ids) == 30 == len(set(ids)) and src.count("a") > src.count("b") > 0
    assert dq.select(cands, 30, now=200) == (ids, src)  # deterministic
    # recent outcomes count more: b converts a lot now
    for t in range(200, 260):
        dq.record("b", t, converted=True)
    assert dq.values(now=260)["b"] > dq.values(now=260)["a"]
    v2 = estimate_values(["a"], np.array(["a"]), [0.0], [1.0], now=0.0, half_life=1.0, prior_rate=0.0,
                         prior_weight=1.0)
    assert v2 == {"a": 0.5}
