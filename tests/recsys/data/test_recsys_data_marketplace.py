import dataclasses

import numpy as np
import pytest

from recsys_jax.data.attribution import AttributionConfig, attribute
from recsys_jax.data.marketplace import MarketplaceConfig, generate_marketplace

CFG = MarketplaceConfig(num_users=400, num_categories=10, organic_per_category=20, num_advertisers=12,
                        sessions=(3, 6), seed=3)


@pytest.fixture(scope="module")
def sim():
    return generate_marketplace(CFG)


def _arrays(d):
    log = d.log
    return [log.user, log.item, log.timestamp, log.action, log.surface, log.is_ad, log.advertiser, log.campaign,
            np.nan_to_num(log.value, nan=-1), d.intent, d.cause, d.user_interest]


def test_deterministic_for_a_seed(sim):
    again = generate_marketplace(CFG)
    for a, b in zip(_arrays(sim), _arrays(again)):
        np.testing.assert_array_equal(a, b)
    other = generate_marketplace(dataclasses.replace(CFG, seed=4))
    assert len(other.log) != len(sim.log) or not np.array_equal(other.log.item, sim.log.item)
    assert not np.array_equal(other.user_interest, sim.user_interest)


def test_counts_and_structure(sim):
    log = sim.log
    counts = log.action_counts()
    assert counts["impression"] > counts["click"] > counts["save"] > 0
    assert counts["ad_click"] > counts["conversion"] > 0 and counts["purchase"] > 0
    ses = np.diff(log.user_offsets())
    assert (ses > 0).all() and log.num_users == 400
    assert log.num_items == 10 * 20 + 12 * CFG.ads_per_advertiser
    # sorted by user then time; ads carry their advertiser, organic items none
    assert (np.diff(log.user) >= 0).all()
    same = np.diff(log.user) == 0
    assert (np.diff(log.timestamp)[same] >= 0).all()
    assert (log.is_ad == (log.advertiser >= 0)).all() and (log.is_ad == log.item_is_ad[log.item]).all()
    assert (log.action[log.is_ad] != 1).all() and (log.action[~log.is_ad] != 3).all()  # click vs ad_click
    conv = log.action == 4
    assert np.isfinite(log.value[conv]).all() and np.isnan(log.value[log.action == 0]).all()
    np.testing.assert_allclose(sim.user_interest.sum(1), 1, rtol=1e-5)


def test_clicks_follow_the_intent_in_force(sim):
    log = sim.log
    click = np.isin(log.action, [1, 3])
    hit = (log.item_category[log.item[click]] == sim.intent[click]).mean()
    assert hit > 5 / CFG.num_categories  # chance is 1 / 10
    # search follows the intent more than home does
    imp = log.action == 0
    match = log.item_category[log.item] == sim.intent
    assert match[imp & (log.surface == 1)].mean() > match[imp & (log.surface == 0)].mean() + 0.2
    # intents come from the user's long-term interests: their interest mass is far above uniform
    assert sim.user_interest[log.user, sim.intent].mean() > 3 / CFG.num_categories


def test_conversions_follow_clicks_on_that_advertiser(sim):
    log = sim.log
    conv = np.flatnonzero(log.action == 4)
    caused = conv[sim.cause[conv] >= 0]
    src = sim.cause[caused]
    assert len(caused) > 0 and (sim.cause[log.action != 4] == -1).all()
    assert (log.action[src] == 3).all() and (log.user[src] == log.user[caused]).all()
    assert (log.advertiser[src] == log.advertiser[caused]).all() and (log.timestamp[src] < log.timestamp[caused]).all()
    direct = conv[sim.cause[conv] < 0]
    assert 0 < len(direct) < len(conv)
    # some delays fall outside a 7-day window, most inside
    delay = log.timestamp[caused] - log.timestamp[src]
    assert 0.5 < (delay <= 7 * 86400).mean() < 1
    # last-click attribution with an unbounded window credits the causing click's advertiser
    r = attribute(log, AttributionConfig(window=10**9))
    assert (r.click[caused] >= 0).all() and (log.advertiser[r.click[caused]] == log.advertiser[caused]).all()
    assert r.counts["outside_window"] == 0


def test_budgets_are_respected_and_stop_ads():
    d = generate_marketplace(dataclasses.replace(CFG, budget_mean=10.0))
    log = d.log
    clicks = np.bincount(log.advertiser[log.action == 3], minlength=12)
    np.testing.assert_allclose(clicks * CFG.cpc, d.advertiser_spent)
    assert (d.advertiser_spent <= d.advertiser_budget + 1e-9).all()
    exhausted = np.flatnonzero(d.advertiser_budget - d.advertiser_spent < CFG.cpc)
    assert len(exhausted) > 0
    period = (log.timestamp - CFG.start_time) // CFG.session_every
    for a in exhausted:  # no impression in a period after the one of its last paid click
        last_click = period[(log.action == 3) & (log.advertiser == a)].max()
        assert period[(log.action == 0) & (log.advertiser == a)].max() <= last_click
    assert period.max() > period[(log.action == 0) & np.isin(log.advertiser, exhausted)].min()


def test_bad_config():
    with pytest.raises(ValueError, match="surface_probs and every surface_mix row must sum to 1"):
        generate_marketplace(dataclasses.replace(CFG, surface_probs=(0.5, 0.5, 0.5)))
