"""A marketplace simulator: organic items and ads, surfaces, impressions -> clicks -> conversions.

Generative story (seeded and deterministic; vectorised over users, one step per feed slot):

* **Catalog.** ``num_categories`` categories with ``organic_per_category`` organic items each
  (Zipf popularity inside a category) and ``num_advertisers`` advertisers, each in one category
  with ``ads_per_advertiser`` ad items split over ``campaigns_per_advertiser`` campaigns and a
  budget (log-normal around ``budget_mean`` clicks per 1,000 users); an ad click costs ``cpc``.
* **Users.** A long-term interest distribution over categories (Dirichlet with
  ``interest_concentration``: a few categories dominate) and a short-term **intent** (a category):
  drawn from the interests at a session start (or kept, ``p_keep_intent``) and redrawn with
  ``p_intent_drift`` at every slot.
* **Sessions.** Session ``s`` of every user falls in period ``s`` (``session_every`` seconds,
  random offset), so the simulation runs in time order. A session is on one surface (``surfaces``,
  ``surface_probs``) and shows ``slots_per_session`` items; every ``ad_every``-th slot is an ad.
  Each surface mixes what it shows (``surface_mix``: shares of intent, long-term interest and
  popular categories): search follows the intent, home the long-term interests.
* **Ads.** An ad slot shows an ad of an advertiser in the slot's category that still has budget
  (else of any advertiser with budget, else an organic item). Clicks beyond an advertiser's
  remaining budget are not served: those impressions are dropped, so spend never exceeds the budget
  and an advertiser stops showing once its budget is spent.
* **Responses.** Click probability ``click_base + click_intent * [category == intent] +
  click_interest * interest[category]`` (times ``ad_click_factor`` for ads). An organic click may be
  followed by a save (``p_save``) and a purchase (``p_purchase``, minutes later); an ad click by a
  conversion on that ad (``p_conversion``, doubled when the ad matches the intent) after a delay
  (exponential, mean ``conversion_delay_mean``: some fall outside a 7-day attribution window).
  ``p_direct_conversion`` per session: a conversion on an ad of the intent's category without any
  click (attribution keeps it as an organic purchase).

Ground truth kept in :class:`MarketplaceData`: each user's interest distribution, the intent in
force at every event (for a conversion: at its click), the click that caused every conversion (``cause``, -1 for direct ones), and
each advertiser's category, budget and spend.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recsys_jax.data.events import DEFAULT_ACTIONS, DEFAULT_SURFACES, EventLog, Vocab
from recsys_jax.data.sequences import IdMap

_DAY = 86400
_IMPRESSION, _CLICK, _SAVE, _AD_CLICK, _CONVERSION, _PURCHASE = range(6)


@dataclasses.dataclass(frozen=True)
class MarketplaceConfig:
    num_users: int = 2000
    num_categories: int = 20
    organic_per_category: int = 50
    num_advertisers: int = 40
    ads_per_advertiser: int = 4
    campaigns_per_advertiser: int = 2
    sessions: tuple[int, int] = (4, 12)  # per user, inclusive range
    slots_per_session: int = 8
    ad_every: int = 4  # every 4th slot is an ad slot (0: no ads)
    surface_probs: tuple[float, float, float] = (0.5, 0.3, 0.2)  # home, search, related
    # per surface: (intent, long-term interest, popular) shares of the shown categories
    surface_mix: tuple[tuple[float, float, float], ...] = ((0.3, 0.5, 0.2), (0.85, 0.05, 0.1), (0.6, 0.25, 0.15))
    interest_concentration: float = 0.3
    p_keep_intent: float = 0.3
    p_intent_drift: float = 0.05
    click_base: float = 0.02
    click_intent: float = 0.3
    click_interest: float = 0.2
    ad_click_factor: float = 0.7
    p_save: float = 0.2
    p_purchase: float = 0.05
    p_conversion: float = 0.15
    p_direct_conversion: float = 0.01
    conversion_delay_mean: float = 3.0 * _DAY  # a float, as a run config reads it back (same cache key)
    budget_mean: float = 70.0  # in ad clicks (cost / cpc) per 1,000 users: budgets scale with the users
    cpc: float = 1.0
    session_every: int = _DAY
    zipf_exponent: float = 1.0
    record_impressions: bool = True
    start_time: int = 1_600_000_000
    seed: int = 0

    def validate(self) -> None:
        lo, hi = self.sessions
        p = []
        for name in ("num_users", "num_categories", "organic_per_category", "ads_per_advertiser",
                     "campaigns_per_advertiser", "slots_per_session", "session_every"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_advertisers < 0 or self.ad_every < 0:
            p.append("num_advertisers and ad_every must be >= 0")
        if not 1 <= lo <= hi:
            p.append(f"sessions must satisfy 1 <= lo <= hi, got {self.sessions}")
        if len(self.surface_probs) != len(DEFAULT_SURFACES) or len(self.surface_mix) != len(DEFAULT_SURFACES):
            p.append(f"surface_probs and surface_mix need one entry per surface {list(DEFAULT_SURFACES)}")
        elif abs(sum(self.surface_probs) - 1) > 1e-6 or any(abs(sum(m) - 1) > 1e-6 for m in self.surface_mix):
            p.append("surface_probs and every surface_mix row must sum to 1")
        for name in ("p_keep_intent", "p_intent_drift", "p_save", "p_purchase", "p_conversion",
                     "p_direct_conversion", "ad_click_factor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                p.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.interest_concentration <= 0 or self.cpc <= 0 or self.budget_mean <= 0:
            p.append("interest_concentration, cpc and budget_mean must be > 0")
        if p:
            raise ValueError("bad MarketplaceConfig: " + "; ".join(p))


@dataclasses.dataclass
class MarketplaceData:
    """The simulated log (sorted by user, then time) and the ground truth behind it."""

    log: EventLog
    user_interest: np.ndarray  # [U, C] float32 long-term interest distribution
    intent: np.ndarray  # [E] int16 category in force at each event
    cause: np.ndarray  # [E] int64 row of the ad click that caused a conversion; -1 otherwise
    advertiser_category: np.ndarray  # [A]
    advertiser_budget: np.ndarray  # [A] float64
    advertiser_spent: np.ndarray  # [A] float64
    config: MarketplaceConfig


def _catalog(cfg: MarketplaceConfig, rng: np.random.Generator):
    c, k = cfg.num_categories, cfg.organic_per_category
    n_org = c * k
    org_cat = np.repeat(np.arange(c), k)
    w = 1.0 / (np.concatenate([rng.permutation(k) for _ in range(c)]) + 1.0) ** cfg.zipf_exponent
    within = np.cumsum(w.reshape(c, k), axis=1)
    cat_mass = within[:, -1].copy()
    key = (np.arange(c)[:, None] + within / within[:, -1:]).reshape(-1)  # block c spans (c, c + 1]
    key[np.arange(1, c + 1) * k - 1] = np.arange(1, c + 1)  # exact block ends
    a = cfg.num_advertisers
    adv_cat = rng.choice(c, size=a, p=cat_mass / cat_mass.sum()) if a else np.zeros(0, np.int64)
    n_ads = a * cfg.ads_per_advertiser
    item_cat = np.concatenate([[-1], org_cat, np.repeat(adv_cat, cfg.ads_per_advertiser)]).astype(np.int32)
    item_adv = np.concatenate([np.full(1 + n_org, -1), np.repeat(np.arange(a), cfg.ads_per_advertiser)])
    item_is_ad = item_adv >= 0
    slot = np.tile(np.arange(cfg.ads_per_advertiser), a)
    ad_campaign = np.repeat(np.arange(a), cfg.ads_per_advertiser) * cfg.campaigns_per_advertiser + (
        slot % cfg.campaigns_per_advertiser)
    item_campaign = np.concatenate([np.full(1 + n_org, -1), ad_campaign]).astype(np.int32)
    budget = cfg.budget_mean * cfg.cpc * cfg.num_users / 1000 * rng.lognormal(-0.125, 0.5, size=a)
    return dict(n_org=n_org, key=key, cat_p=cat_mass / cat_mass.sum(), adv_cat=adv_cat, n_ads=n_ads,
                item_cat=item_cat, item_adv=item_adv.astype(np.int32), item_is_ad=item_is_ad,
                item_campaign=item_campaign, budget=budget)


def _draw_rows(cum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One category per row of cumulative distributions ``cum`` [n, C]."""
    u = rng.random(len(cum))[:, None] * cum[:, -1:]
    return np.minimum((cum <= u).sum(axis=1), cum.shape[1] - 1)


def generate_marketplace(cfg: MarketplaceConfig | None = None) -> MarketplaceData:
    """Simulate the marketplace of ``cfg`` (see the module docstring)."""
    cfg = cfg or MarketplaceConfig()
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    cat = _catalog(cfg, rng)
    U, C, A = cfg.num_users, cfg.num_categories, cfg.num_advertisers
    interest = rng.dirichlet(np.full(C, cfg.interest_concentration), size=U).astype(np.float32)
    interest_cum = np.cumsum(interest, axis=1)
    pop_cum = np.cumsum(cat["cat_p"])
    n_sessions = rng.integers(cfg.sessions[0], cfg.sessions[1] + 1, size=U)
    intent = _draw_rows(interest_cum, rng)
    surface = np.zeros(U, np.int64)
    mix = np.cumsum(np.asarray(cfg.surface_mix), axis=1)
    remaining = cat["budget"].copy()
    ads_of = cat["n_org"] + 1 + np.arange(A)[:, None] * cfg.ads_per_advertiser  # first ad item of each
    chunks: list[dict] = []
    next_id = 0

    def emit(users, items, times, action, intents, surf, cause=None):
        nonlocal next_id
        n = len(users)
        ids = np.arange(next_id, next_id + n)
        next_id += n
        chunks.append(dict(user=users.astype(np.int32), item=items.astype(np.int32), timestamp=times,
                           action=np.full(n, action, np.int16), surface=surf.astype(np.int8),
                           intent=intents.astype(np.int16), cause=np.full(n, -1) if cause is None else cause))
        return ids

    for s in range(int(n_sessions.max())):
        us = np.flatnonzero(n_sessions > s)
        t = cfg.start_time + s * cfg.session_every + rng.integers(0, cfg.session_every // 2 + 1, size=len(us))
        surface[us] = rng.choice(len(cfg.surface_probs), size=len(us), p=cfg.surface_probs)
        redraw = rng.random(len(us)) >= (cfg.p_keep_intent if s else 0.0)
        intent[us[redraw]] = _draw_rows(interest_cum[us[redraw]], rng)
        if A and cfg.p_direct_conversion > 0:
            d = us[rng.random(len(us)) < cfg.p_direct_conversion]
            if len(d):
                # an advertiser of the intent's category when there is one, else any
                match = cat["adv_cat"][None, :] == intent[d][:, None]
                pick = np.where(match.any(1), np.argmax(match * rng.random((len(d), A)), 1), rng.integers(0, A, len(d)))
                item = ads_of[pick, 0] + rng.integers(0, cfg.ads_per_advertiser, len(d))
                dt = rng.integers(0, cfg.session_every // 2 + 1, len(d))
                emit(d, item, cfg.start_time + s * cfg.session_every + dt, _CONVERSION, intent[d], surface[d])
        for j in range(cfg.slots_per_session):
            if j:
                drift = us[rng.random(len(us)) < cfg.p_intent_drift]
                intent[drift] = _draw_rows(interest_cum[drift], rng)
            t = t + 30 + rng.exponential(120, len(us)).astype(np.int64)
            sf, it = surface[us], intent[us]
            r = rng.random(len(us))
            m = mix[sf]
            shown = np.where(r < m[:, 0], it, np.where(r < m[:, 1], _draw_rows(interest_cum[us], rng),
                                                       np.minimum(np.searchsorted(pop_cum, rng.random(len(us)) * pop_cum[-1]), C - 1)))
            item = 1 + np.searchsorted(cat["key"], shown + rng.random(len(us)), side="right")
            item = np.minimum(item, (shown + 1) * cfg.organic_per_category)  # guard float edges
            is_ad_slot = cfg.ad_every > 0 and A > 0 and j % cfg.ad_every == cfg.ad_every - 1
            adv = np.full(len(us), -1)
            if is_ad_slot and (remaining >= cfg.cpc).any():
                active = np.flatnonzero(remaining >= cfg.cpc)
                act_sorted = active[np.argsort(cat["adv_cat"][active], kind="stable")]
                starts = np.searchsorted(cat["adv_cat"][act_sorted], np.arange(C + 1))
                cnt = starts[shown + 1] - starts[shown]
                any_pick = act_sorted[rng.integers(0, len(act_sorted), len(us))]
                cat_pick = act_sorted[np.minimum(starts[shown] + (rng.random(len(us)) * np.maximum(cnt, 1)).astype(np.int64),
                                                 len(act_sorted) - 1)]
                adv = np.where(cnt > 0, cat_pick, any_pick)
                item = np.where(adv >= 0, ads_of[np.maximum(adv, 0), 0] + rng.integers(0, cfg.ads_per_advertiser, len(us)),
                                item)
            ad = adv >= 0
            icat = cat["item_cat"][item]
            p = cfg.click_base + cfg.click_intent * (icat == it) + cfg.click_interest * interest[us, icat]
            p = np.where(ad, p * cfg.ad_click_factor, p)
            click = rng.random(len(us)) < p
            served = np.ones(len(us), bool)
            if ad.any():  # clicks beyond the remaining budget are not served
                ac = np.flatnonzero(click & ad)
                order = ac[np.argsort(adv[ac], kind="stable")]
                a_sorted = adv[order]
                first = np.searchsorted(a_sorted, a_sorted, side="left")
                rank = np.arange(len(order)) - first
                allowed = np.floor(remaining[a_sorted] / cfg.cpc + 1e-9).astype(np.int64)
                served[order[rank >= allowed]] = False
                paid = order[rank < allowed]
                np.subtract.at(remaining, adv[paid], cfg.cpc)
            us_s, item_s, t_s, sf_s, it_s, ad_s, click_s = (x[served] for x in (us, item, t, sf, it, ad, click))
            if cfg.record_impressions:
                emit(us_s, item_s, t_s, _IMPRESSION, it_s, sf_s)
            oc, acl = click_s & ~ad_s, click_s & ad_s
            emit(us_s[oc], item_s[oc], t_s[oc] + 5, _CLICK, it_s[oc], sf_s[oc])
            click_ids = emit(us_s[acl], item_s[acl], t_s[acl] + 5, _AD_CLICK, it_s[acl], sf_s[acl])
            sv = rng.random(int(oc.sum())) < cfg.p_save
            emit(us_s[oc][sv], item_s[oc][sv], t_s[oc][sv] + 20, _SAVE, it_s[oc][sv], sf_s[oc][sv])
            pu = rng.random(int(oc.sum())) < cfg.p_purchase
            emit(us_s[oc][pu], item_s[oc][pu], t_s[oc][pu] + 60 + rng.integers(0, 600, int(pu.sum())), _PURCHASE,
                 it_s[oc][pu], sf_s[oc][pu])
            if acl.any():
                match = cat["item_cat"][item_s[acl]] == it_s[acl]
                cv = rng.random(int(acl.sum())) < np.minimum(1.0, cfg.p_conversion * np.where(match, 2.0, 1.0))
                delay = 60 + rng.exponential(cfg.conversion_delay_mean, int(cv.sum())).astype(np.int64)
                emit(us_s[acl][cv], item_s[acl][cv], t_s[acl][cv] + 5 + delay, _CONVERSION, it_s[acl][cv],
                     sf_s[acl][cv], cause=click_ids[cv])

    cols = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    span = int(cols["timestamp"].max() - cols["timestamp"].min()) + 1
    if span < 2**40 and U < 2**22:  # one int64 key: a stable argsort is faster than lexsort
        order = np.argsort(cols["user"].astype(np.int64) * span + (cols["timestamp"] - cols["timestamp"].min()),
                           kind="stable")
    else:
        order = np.lexsort((cols["timestamp"], cols["user"]))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    cols = {k: v[order] for k, v in cols.items()}
    cause = np.where(cols["cause"] >= 0, inverse[np.maximum(cols["cause"], 0)], -1)
    item = cols["item"].astype(np.int32)
    action = cols["action"]
    value = np.full(len(item), np.nan, np.float32)
    conv, pur = action == _CONVERSION, action == _PURCHASE
    value[conv] = rng.lognormal(3.0, 0.5, int(conv.sum()))
    value[pur] = rng.lognormal(2.5, 0.5, int(pur.sum()))
    n_items = cat["n_org"] + cat["n_ads"]
    log = EventLog(
        user=cols["user"], item=item, timestamp=cols["timestamp"], action=action, surface=cols["surface"],
        is_ad=cat["item_is_ad"][item], advertiser=cat["item_adv"][item], campaign=cat["item_campaign"][item],
        value=value, actions=Vocab(DEFAULT_ACTIONS), surfaces=Vocab(DEFAULT_SURFACES),
        item_map=IdMap([None] + [str(i) for i in range(1, n_items + 1)], offset=1),
        user_map=IdMap([str(u) for u in range(1, U + 1)]), item_is_ad=cat["item_is_ad"],
        item_advertiser=cat["item_adv"], item_category=cat["item_cat"],
        advertisers=[f"adv-{a}" for a in range(A)],
        campaigns=[f"adv-{a}/c{k}" for a in range(A) for k in range(cfg.campaigns_per_advertiser)],
        categories=[f"category-{c}" for c in range(C)])
    return MarketplaceData(log=log, user_interest=interest, intent=cols["intent"].astype(np.int16), cause=cause,
                           advertiser_category=cat["adv_cat"], advertiser_budget=cat["budget"],
                           advertiser_spent=cat["budget"] - remaining, config=cfg)
