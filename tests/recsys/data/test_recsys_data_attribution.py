import time

import numpy as np
import pytest

from recsys_jax.data.attribution import AttributionConfig, apply_attribution, attribute, parse_window
from recsys_jax.data.events import DEFAULT_ACTIONS, EventLog, Vocab, make_event_log
from recsys_jax.data.sequences import IdMap

DAY = 86400


def _log(rows):
    """rows: (user, item, advertiser, t, action[, value])"""
    return make_event_log(user=[r[0] for r in rows], item=[r[1] for r in rows], advertiser=[r[2] for r in rows],
                          timestamp=[r[3] for r in rows], action=[r[4] for r in rows],
                          value=[r[5] if len(r) > 5 else None for r in rows],
                          is_ad=[r[2] is not None for r in rows], actions=DEFAULT_ACTIONS)


def _cfg(**kw):
    return AttributionConfig(**{"window": "7d", **kw})


def test_window_inside_outside_and_no_click():
    log = _log([
        ("u", "a1", "A", 0, "ad_click"),
        ("u", "a1", "A", 3 * DAY, "conversion", 10.0),  # inside: credited to row 0
        ("u", "a1", "A", 20 * DAY, "conversion", 5.0),  # the only click is 20 days old: outside
        ("v", "b1", "B", 0, "conversion"),  # v never clicked: no prior click
        ("v", "b1", "B", DAY, "ad_click"),  # a click after the conversion does not count
    ])
    r = attribute(log, _cfg())
    assert r.credit.tolist() == [1, 0, 0, 0, 0] and r.value.tolist() == [10, 0, 0, 0, 0]
    assert r.click.tolist() == [-1, 0, -1, -1, -1]
    c = r.counts
    assert (c["conversions"], c["attributed"], c["outside_window"], c["no_prior_click"]) == (3, 1, 1, 1)
    assert (c["rule"], c["by"], c["window_s"]) == ("last_click", "advertiser", 7 * DAY)
    # exactly at the window edge is inside
    r = attribute(log, _cfg(window=3 * DAY))
    assert r.counts["attributed"] == 1 and attribute(log, _cfg(window=3 * DAY - 1)).counts["attributed"] == 0


def test_interleaved_advertisers_and_users():
    log = _log([
        ("u", "a1", "A", 0, "ad_click"),
        ("u", "b1", "B", 10, "ad_click"),
        ("w", "a1", "A", 15, "ad_click"),  # another user's click on A never gets u's conversion
        ("u", "a2", "A", 20, "ad_click"),
        ("u", "b1", "B", 30, "conversion"),  # -> row 1 (B), not the later A click
        ("u", "a1", "A", 40, "conversion"),  # -> row 3 (last A click of u, another A item)
        ("u", "x", None, 25, "click"),  # organic clicks never get credit
    ])
    r = attribute(log, _cfg())
    assert r.click.tolist()[4:6] == [1, 3] and r.credit.tolist() == [0, 1, 0, 1, 0, 0, 0]
    # by item: the A conversion is on a1, so u's click on a1 (row 0) gets it
    r = attribute(log, _cfg(by="item"))
    assert r.click.tolist()[4:6] == [1, 0] and r.counts["attributed"] == 2


def test_first_last_linear():
    rows = [("u", "a", "A", t, "ad_click") for t in (0, 10, 20)] + [("u", "a", "A", 30, "conversion", 6.0)]
    log = _log(rows)
    assert attribute(log, _cfg(rule="last_click")).credit.tolist() == [0, 0, 1, 0]
    assert attribute(log, _cfg(rule="first_click")).credit.tolist() == [1, 0, 0, 0]
    lin = attribute(log, _cfg(rule="linear"))
    np.testing.assert_allclose(lin.credit, [1 / 3, 1 / 3, 1 / 3, 0], rtol=1e-6)
    np.testing.assert_allclose(lin.value, [2, 2, 2, 0], rtol=1e-6)
    # the window cuts the first click off for every rule: first-click then takes the second
    assert attribute(log, _cfg(rule="first_click", window=25)).credit.tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(attribute(log, _cfg(rule="linear", window=25)).credit, [0, .5, .5, 0])


def test_timestamp_ties():
    # a click in the same second as the conversion counts (even when logged after it);
    # among equal-time clicks log order decides
    log = _log([("u", "a", "A", 5, "conversion"), ("u", "a", "A", 5, "ad_click"), ("u", "b", "A", 5, "ad_click")])
    assert attribute(log, _cfg(rule="last_click")).click[0] == 2
    assert attribute(log, _cfg(rule="first_click")).click[0] == 1


def test_apply_relabels_unattributed_as_organic():
    log = _log([("u", "a", "A", 0, "ad_click"), ("u", "a", "A", 1, "conversion", 3.0),
                ("v", "a", "A", 1, "conversion")])
    out, counts = apply_attribution(log, _cfg())
    assert [out.actions.names[a] for a in out.action] == ["ad_click", "conversion", "purchase"]
    assert out.labels["conversions"].tolist() == [1, 0, 0] and out.labels["conversion_value"][0] == 3
    assert counts["organic_from_unattributed"] == 1 and "conversions" not in log.labels
    # a vocabulary without the organic action gets it appended
    small = _log([("v", "a", "A", 1, "conversion")])
    small = EventLog(**{**small.__dict__, "actions": Vocab(("ad_click", "conversion")),
                        "action": np.array([1])})
    out, _ = apply_attribution(small, _cfg(organic_action="organic"))
    assert out.actions.names == ("ad_click", "conversion", "organic") and out.action.tolist() == [2]


def test_bad_config_and_window_strings():
    assert parse_window("24h") == DAY and parse_window("1w") == 7 * DAY and parse_window(60) == 60
    with pytest.raises(ValueError, match="expected seconds or a number with a unit"):
        parse_window("7 days")
    with pytest.raises(ValueError, match="expected one of"):
        attribute(_log([("u", "a", "A", 0, "ad_click")]), AttributionConfig(rule="u_shaped"))


def test_matches_brute_force_on_random_log_and_scales():
    rng = np.random.default_rng(0)
    n, users, advs = 3000, 40, 5
    act = rng.choice([3, 4, 1], size=n, p=[.5, .3, .2])  # ad_click, conversion, click
    adv = rng.integers(0, advs, n)
    items = adv * 10 + rng.integers(1, 3, n)
    log = EventLog(user=rng.integers(0, users, n), item=items, timestamp=rng.integers(0, 40 * DAY, n), action=act,
                   surface=np.zeros(n), is_ad=act != 1, advertiser=np.where(act == 1, -1, adv),
                   campaign=np.full(n, -1), value=np.full(n, np.nan), actions=Vocab(DEFAULT_ACTIONS),
                   surfaces=Vocab(("home",)), item_map=IdMap([None] + [str(i) for i in range(1, 60)], offset=1),
                   user_map=IdMap([str(u) for u in range(users)]), item_is_ad=np.zeros(60),
                   item_advertiser=np.full(60, -1), item_category=np.full(60, -1), advertisers=list("ABCDE"))
    for by in ("advertiser", "item"):
        for rule in ("last_click", "first_click"):
            got = attribute(log, _cfg(by=by, rule=rule, window=5 * DAY)).click
            key = log.advertiser if by == "advertiser" else log.item
            for c in np.flatnonzero(act == 4):
                t = log.timestamp[c]
                ok = np.flatnonzero((act == 3) & (log.user == log.user[c]) & (key == key[c]) &
                                    (log.timestamp <= t) & (log.timestamp >= t - 5 * DAY))
                if len(ok) == 0:
                    assert got[c] == -1
                    continue
                # (time, row) order
                best = sorted(ok, key=lambda i: (log.timestamp[i], i))[-1 if rule == "last_click" else 0]
                assert got[c] == best
        # conversions_delay: seconds from each credited click to the earliest conversion crediting it
        key = log.advertiser if by == "advertiser" else log.item
        for rule in ("last_click", "first_click", "linear"):
            res = attribute(log, _cfg(by=by, rule=rule, window=5 * DAY))
            want = np.full(n, np.inf)
            for c in np.flatnonzero(act == 4):
                t = log.timestamp[c]
                if rule == "linear":
                    credited = np.flatnonzero((act == 3) & (log.user == log.user[c]) & (key == key[c]) &
                                              (log.timestamp <= t) & (log.timestamp >= t - 5 * DAY))
                else:
                    credited = [res.click[c]] if res.click[c] >= 0 else []
                for k in credited:
                    want[k] = min(want[k], t - log.timestamp[k])
            np.testing.assert_array_equal(res.delay, want.astype(np.float32), err_msg=f"{by} {rule}")
            assert np.array_equal(np.isfinite(res.delay), res.credit > 0)
    big = log.take(rng.integers(0, n, 2_000_000))
    t0 = time.perf_counter()
    attribute(big, _cfg(rule="linear"))
    assert time.perf_counter() - t0 < 20
