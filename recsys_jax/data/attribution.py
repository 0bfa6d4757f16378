"""Conversion attribution: credit each conversion to the user's earlier ad clicks.

A conversion (action ``conversion``) is eligible for the clicks (actions ``click_actions``, default
``ad_click``) of the same user on the same advertiser (``by="advertiser"``), the same item
(``by="item"``) or the same campaign (``by="campaign"``) whose timestamp ``t_click`` satisfies
``t_conv - window <= t_click <= t_conv``.

* ``last_click``: the latest eligible click gets credit 1; ``first_click``: the earliest;
  ``linear``: each eligible click gets ``1 / n``.
* **Ties**: a click with the same timestamp as the conversion counts as before it (logs with
  one-second resolution record a click and the conversion it caused in the same second). Among
  clicks with equal timestamps, log order decides: last-click takes the one later in the log,
  first-click the one earlier.
* The credit lands on the click as the label ``conversions`` (and ``conversion_value``: credit times
  the conversion's value, when it has one). A click can be credited by several conversions.
  ``conversions_delay`` (seconds, inf: none) says when the click's label became known: the earliest
  crediting conversion's time minus the click's, so a time split at ``T`` trains a click before ``T`` as
  converted only if that conversion also happened before ``T``.
* A conversion with no eligible click is **unattributed** and is kept as an organic action
  (``organic_action``, default ``purchase``). It is counted as ``outside_window`` when the user did
  click that advertiser (item) before, only longer ago than the window, else ``no_prior_click``
  (conversions without an advertiser / campaign under those modes count as ``no_prior_click`` too).

Vectorised: clicks are sorted by (user, key, time) and every conversion finds its eligible range
with two binary searches, so ~10M events take seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recsys_jax.data.events import EventLog

RULES = ("last_click", "first_click", "linear")
BY = ("advertiser", "item", "campaign")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_window(value: int | float | str) -> int:
    """Seconds from a number or a string with a unit: ``"3600"``, ``"30m"``, ``"24h"``, ``"7d"``, ``"1w"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = int(value)
    else:
        text = str(value).strip().lower()
        unit = _UNITS.get(text[-1:]) if text[-1:].isalpha() else 1
        try:
            if unit is None:
                raise ValueError
            seconds = int(float(text[:-1] if text[-1:].isalpha() else text) * unit)
        except ValueError:
            raise ValueError(f"attribution window {value!r}: expected seconds or a number with a unit "
                             f"{sorted(_UNITS)}, e.g. '7d'") from None
    if seconds < 0:
        raise ValueError(f"attribution window must be >= 0 seconds, got {value!r}")
    return seconds


@dataclasses.dataclass(frozen=True)
class AttributionConfig:
    rule: str = "last_click"  # one of RULES
    by: str = "advertiser"  # one of BY
    window: int | str = "7d"  # seconds, or a string with a unit (parse_window)
    conversion_action: str = "conversion"
    click_actions: tuple[str, ...] = ("ad_click",)
    organic_action: str = "purchase"

    def validate(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"attribution rule {self.rule!r}: expected one of {list(RULES)}")
        if self.by not in BY:
            raise ValueError(f"attribution by {self.by!r}: expected one of {list(BY)}")
        if not self.click_actions:
            raise ValueError("attribution needs at least one click action")
        parse_window(self.window)


@dataclasses.dataclass
class Attribution:
    """Per event: ``credit`` (float32, the conversions credited to a click), ``value`` (float32,
    credited conversion value), ``click`` (int64, for a conversion under last/first-click: the row of
    the credited click, else -1; under linear the latest eligible click), ``delay`` (float32, for a
    credited click: seconds from it to the earliest conversion crediting it, else inf) and ``counts``."""

    credit: np.ndarray
    value: np.ndarray
    click: np.ndarray
    counts: dict
    delay: np.ndarray


def attribute(log: EventLog, cfg: AttributionConfig | None = None) -> Attribution:
    """Attribute the conversions of ``log`` (rows in any order) to clicks; see the module docstring."""
    cfg = cfg or AttributionConfig()
    cfg.validate()
    window = parse_window(cfg.window)
    n = len(log)
    credit = np.zeros(n, np.float32)
    value = np.zeros(n, np.float32)
    click_of = np.full(n, -1, np.int64)
    delay = np.full(n, np.inf, np.float32)
    counts = {"rule": cfg.rule, "by": cfg.by, "window_s": window, "conversions": 0, "attributed": 0,
              "outside_window": 0, "no_prior_click": 0, "credited_clicks": 0}
    if cfg.conversion_action not in log.actions:
        return Attribution(credit, value, click_of, counts, delay)
    conv_code = log.actions.code(cfg.conversion_action)
    click_codes = [log.actions.code(a) for a in cfg.click_actions if a in log.actions]
    key = {"advertiser": log.advertiser, "item": log.item, "campaign": log.campaign}[cfg.by].astype(np.int64)
    is_conv = log.action == conv_code
    is_click = np.isin(log.action, click_codes) & (key >= 0)
    conv = np.flatnonzero(is_conv)
    counts["conversions"] = int(len(conv))
    clicks = np.flatnonzero(is_click)
    if len(conv) == 0:
        return Attribution(credit, value, click_of, counts, delay)
    # group = (user, key) pair; composite sort key = group * (T + 1) + time rank (no overflow for E < 3e9)
    rows = np.concatenate([clicks, conv])
    pair = log.user[rows] * (int(key.max(initial=0)) + 2) + key[rows] + 1  # < 2^63 for any realistic log
    _, group = np.unique(pair, return_inverse=True)
    group = group.reshape(-1).astype(np.int64)
    g_click, g_conv = group[: len(clicks)], group[len(clicks):]
    times = np.unique(log.timestamp[rows])
    stride = len(times) + 1
    rank = np.searchsorted(times, log.timestamp[rows])
    r_click, r_conv = rank[: len(clicks)], rank[len(clicks):]
    # clicks sorted by (group, time, log row): ties in time keep log order
    order = np.lexsort((clicks, r_click, g_click))
    clicks, ck = clicks[order], g_click[order] * stride + r_click[order]
    t_conv = log.timestamp[conv]
    hi = np.searchsorted(ck, g_conv * stride + r_conv, side="right")  # clicks at t <= t_conv
    lo_rank = np.searchsorted(times, t_conv - window, side="left")  # first time >= t_conv - window
    lo = np.searchsorted(ck, g_conv * stride + lo_rank, side="left")
    g_sorted = g_click[order]
    has_prior = (hi > 0) & (g_sorted[np.maximum(hi - 1, 0)] == g_conv) if len(clicks) else np.zeros(len(conv), bool)
    ok = has_prior & (hi > lo)
    bad_key = key[conv] < 0
    counts["attributed"] = int(ok.sum())
    counts["outside_window"] = int((has_prior & ~ok & ~bad_key).sum())
    counts["no_prior_click"] = int(len(conv) - counts["attributed"] - counts["outside_window"])
    conv_value = np.nan_to_num(log.value[conv], nan=0.0)
    okc, lo, hi, cv = conv[ok], lo[ok], hi[ok], conv_value[ok]
    if cfg.rule in ("last_click", "first_click"):
        pick = clicks[hi - 1] if cfg.rule == "last_click" else clicks[lo]
        np.add.at(credit, pick, 1.0)
        np.add.at(value, pick, cv)
        np.minimum.at(delay, pick, (log.timestamp[okc] - log.timestamp[pick]).astype(np.float32))
        click_of[okc] = pick
    else:  # linear: 1/n to every click in [lo, hi) via a difference array over the sorted clicks
        share = 1.0 / (hi - lo)
        for target, amount in ((credit, share), (value, cv * share)):
            diff = np.zeros(len(clicks) + 1, np.float64)
            np.add.at(diff, lo, amount)
            np.add.at(diff, hi, -amount)
            target[clicks] += np.cumsum(diff)[:-1].astype(np.float32)
        click_of[okc] = clicks[hi - 1]
        # a click's earliest crediting conversion: the first conversion of its group at or after it (any such
        # conversion within the window credits every click in its window)
        ckeys = np.sort(g_conv[ok] * stride + r_conv[ok])
        first = np.searchsorted(ckeys, ck, side="left")
        found = first < len(ckeys)
        first_key = ckeys[np.minimum(first, len(ckeys) - 1)]
        found &= first_key // stride == ck // stride
        gap = times[first_key % stride] - log.timestamp[clicks]
        found &= gap <= window
        delay[clicks[found]] = gap[found].astype(np.float32)
    counts["credited_clicks"] = int((credit > 0).sum())
    return Attribution(credit, value, click_of, counts, delay)


def apply_attribution(log: EventLog, cfg: AttributionConfig | None = None) -> tuple[EventLog, dict]:
    """:func:`attribute`, then write the labels ``conversions``, ``conversion_value`` and ``conversions_delay``
    onto the log and relabel unattributed conversions as ``cfg.organic_action``; returns the log and counts."""
    cfg = cfg or AttributionConfig()
    result = attribute(log, cfg)
    out = dataclasses.replace(log, labels=dict(log.labels))
    if cfg.conversion_action in log.actions:
        unattributed = np.flatnonzero((log.action == log.actions.code(cfg.conversion_action)) & (result.click < 0))
        if len(unattributed):
            out = out.with_action(unattributed, cfg.organic_action)
    out.labels = {**out.labels, "conversions": result.credit, "conversion_value": result.value,
                  "conversions_delay": result.delay}
    return out, {**result.counts, "organic_from_unattributed": int(result.counts["conversions"]
                                                                  - result.counts["attributed"])}
