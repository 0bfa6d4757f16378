"""Quotas on a ranked candidate list, and a dynamic split of a slot budget across candidate sources.

**Caps and category minimums** (:func:`apply_quotas`, one compiled program over a batch of ranked
candidate lists): walk each list in rank order and take a candidate unless

* its advertiser already has ``per_advertiser`` items taken (advertiser < 0: never capped),
* its category already has ``cat_max[c]`` items taken (category < 0: no category),
* taking it would leave too few free slots for the categories still below their ``cat_min``
  (the slots those minimums need are reserved).

A second walk then fills slots still free (a minimum that the candidates cannot meet) with the best
remaining candidates under the caps only. The result keeps the rank order. Deterministic; the
maximums and caps always hold, the minimums whenever the candidates allow them (with an advertiser
cap a greedy walk can, rarely, miss a feasible minimum).

**Dynamic allocation across sources** (:func:`estimate_values`, :func:`allocate`,
:func:`merge_sources`, :class:`DynamicQuota`): each source's value is its recent conversion rate
(outcomes weighted by ``0.5 ** (age / half_life)``, smoothed towards a prior), the budget ``k`` is
split by the highest-averages (D'Hondt) rule above per-source floors and below caps -- the same as
giving one slot at a time to the source with the highest ``value / (slots + 1)``, ties to the earlier
source -- and the lists are merged without duplicates, best source first.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _first_position(groups: jax.Array) -> jax.Array:
    """``[B, C]``: position of the first candidate of each candidate's group (< 0 stays < 0)."""
    b, c = groups.shape
    pos = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (b, c))
    order = jnp.lexsort((pos, groups), axis=1)
    g = jnp.take_along_axis(groups, order, axis=1)
    start = jnp.concatenate([jnp.ones((b, 1), bool), g[:, 1:] != g[:, :-1]], axis=1)
    first_sorted = lax.cummax(jnp.where(start, pos, 0), axis=1)
    first = jnp.take_along_axis(order, first_sorted, axis=1)  # original position of each run's head
    out = jnp.zeros_like(first).at[jnp.arange(b)[:, None], order].set(first)
    return jnp.where(groups < 0, -1, out)


@functools.partial(jax.jit, static_argnames=("k", "per_advertiser"))
def _quotas(valid, adv, cat, cat_min, cat_max, *, k, per_advertiser):
    b, c = valid.shape
    n_cat = cat_min.shape[0]
    cap = c + 1 if per_advertiser is None else per_advertiser
    adv = _first_position(adv)
    rows = jnp.arange(b)

    def walk(reserve, state, xs):
        taken, adv_n, cat_n, chosen = state
        j, v, a, ct = xs
        a0, c0 = jnp.maximum(a, 0), jnp.maximum(ct, 0)
        adv_ok = (a < 0) | (adv_n[rows, a0] < cap)
        cat_ok = (ct < 0) | (cat_n[rows, c0] < cat_max[c0])
        ok = v & ~chosen[:, j] & adv_ok & cat_ok & (taken < k)
        if reserve:
            deficit = jnp.sum(jnp.maximum(cat_min[None, :] - cat_n, 0), axis=1)
            helps = (ct >= 0) & (cat_n[rows, c0] < cat_min[c0])
            ok &= (k - taken - 1) >= deficit - helps
        taken = taken + ok
        adv_n = adv_n.at[rows, a0].add(ok & (a >= 0))
        cat_n = cat_n.at[rows, c0].add(ok & (ct >= 0))
        chosen = chosen.at[:, j].set(chosen[:, j] | ok)
        return (taken, adv_n, cat_n, chosen), None

    state = (jnp.zeros(b, jnp.int32), jnp.zeros((b, c), jnp.int32), jnp.zeros((b, n_cat), jnp.int32),
             jnp.zeros((b, c), bool))
    xs = (jnp.arange(c), valid.T, adv.T, cat.T)
    state, _ = lax.scan(functools.partial(walk, True), state, xs)
    state, _ = lax.scan(functools.partial(walk, False), state, xs)
    chosen = state[3]
    order = jnp.argsort(~chosen, axis=1, stable=True)[:, :k]
    return jnp.where(jnp.take_along_axis(chosen, order, axis=1), order, -1)


def apply_quotas(ids, k: int, *, advertiser=None, per_advertiser: int | None = None, category=None,
                 cat_min: Mapping[int, int] | None = None, cat_max: Mapping[int, int] | None = None) -> np.ndarray:
    """Positions (``[B, k]``, -1 = unfilled) of the candidates kept from ranked lists ``ids`` [B, C].

    ``ids`` < 0 are empty slots; ``advertiser`` / ``category`` [B, C] give each candidate's advertiser
    and category (integers, < 0 = none); ``cat_min`` / ``cat_max`` map a category to its bounds.
    """
    ids = np.atleast_2d(np.asarray(ids))
    b, c = ids.shape
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if per_advertiser is not None and (advertiser is None or per_advertiser < 1):
        raise ValueError("per_advertiser needs advertiser=[B, C] and must be >= 1")
    if (cat_min or cat_max) and category is None:
        raise ValueError("cat_min/cat_max need category=[B, C]")
    arrays = {}
    for name, a in (("advertiser", advertiser), ("category", category)):
        a = np.full((b, c), -1) if a is None else np.atleast_2d(np.asarray(a))
        if a.shape != (b, c) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be integers shaped like ids {ids.shape}, got {a.dtype} {a.shape}")
        arrays[name] = a.astype(np.int32)
    cats = sorted(set(cat_min or {}) | set(cat_max or {}))
    if any(x < 0 for x in cats):
        raise ValueError(f"categories are integers >= 0, got {cats}")
    lo = {x: int((cat_min or {}).get(x, 0)) for x in cats}
    hi = {x: int((cat_max or {}).get(x, k)) for x in cats}
    for x in cats:
        if not 0 <= lo[x] <= hi[x]:
            raise ValueError(f"category {x}: need 0 <= min <= max, got min={lo[x]} max={hi[x]}")
    if sum(lo.values()) > k:
        raise ValueError(f"category minimums add up to {sum(lo.values())} > k={k}")
    # dense category index: the listed categories, then one bucket for all the others (no bound)
    cat = arrays["category"]
    dense = np.full_like(cat, -1)
    for i, x in enumerate(cats):
        dense[cat == x] = i
    table_min = np.asarray([lo[x] for x in cats] or [0], np.int32)
    table_max = np.asarray([hi[x] for x in cats] or [k], np.int32)
    out = _quotas(jnp.asarray(ids >= 0), jnp.asarray(arrays["advertiser"]), jnp.asarray(dense),
                  jnp.asarray(table_min), jnp.asarray(table_max), k=int(k), per_advertiser=per_advertiser)
    return np.asarray(out)


# ---- dynamic allocation across sources ------------------------------------------------------------

def estimate_values(sources: Sequence[str], log_source, log_time, log_converted, *, now: float,
                    half_life: float, prior_rate: float = 0.01, prior_weight: float = 10.0) -> dict[str, float]:
    """Recent conversion rate per source from logged outcomes (one row per shown candidate).

    ``(sum_i w_i converted_i + prior_rate * prior_weight) / (sum_i w_i + prior_weight)`` over the
    source's outcomes, ``w_i = 0.5 ** ((now - time_i) / half_life)``; a source with no log gets
    ``prior_rate``. Rows of unknown sources are ignored.
    """
    if half_life <= 0 or prior_weight <= 0 or not 0 <= prior_rate <= 1:
        raise ValueError("need half_life > 0, prior_weight > 0 and 0 <= prior_rate <= 1")
    src = np.asarray(log_source)
    t = np.asarray(log_time, np.float64)
    y = np.asarray(log_converted, np.float64)
    if not (src.shape == t.shape == y.shape and src.ndim == 1):
        raise ValueError(f"log_source, log_time, log_converted must be 1-D of one length, got "
                         f"{src.shape}, {t.shape}, {y.shape}")
    w = 0.5 ** (np.maximum(now - t, 0.0) / half_life)
    out = {}
    for s in sources:
        sel = src == s
        out[s] = float((np.sum(w[sel] * y[sel]) + prior_rate * prior_weight) / (np.sum(w[sel]) + prior_weight))
    return out


def allocate(k: int, values: Mapping[str, float], floors: Mapping[str, int] | None = None,
             caps: Mapping[str, int] | None = None) -> dict[str, int]:
    """Split ``k`` slots over the sources of ``values`` (in their order) by D'Hondt above floors, below caps.

    The sum is ``min(k, sum of caps)``. Raises if the floors exceed ``k`` or a cap.
    """
    names = list(values)
    v = np.asarray([float(values[s]) for s in names])
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError(f"source values must be finite and >= 0, got {dict(values)}")
    lo = np.asarray([int((floors or {}).get(s, 0)) for s in names])
    hi = np.asarray([int((caps or {}).get(s, k)) for s in names])
    unknown = (set(floors or {}) | set(caps or {})) - set(names)
    if unknown:
        raise ValueError(f"floors/caps name unknown sources {sorted(unknown)}; sources are {names}")
    if np.any(lo < 0) or np.any(lo > hi):
        raise ValueError(f"need 0 <= floor <= cap per source, got floors {dict(zip(names, lo.tolist()))} "
                         f"caps {dict(zip(names, hi.tolist()))}")
    if lo.sum() > k:
        raise ValueError(f"floors add up to {lo.sum()} > k={k}")
    extra = int(min(k, hi.sum()) - lo.sum())
    # quotient of the j-th extra slot of source s: v_s / (floor_s + j + 1), j < cap_s - floor_s
    j = np.arange(max(extra, 1))
    quot = v[:, None] / (lo[:, None] + j[None, :] + 1)
    allowed = j[None, :] < (hi - lo)[:, None]
    src = np.broadcast_to(np.arange(len(names))[:, None], quot.shape)
    cand = np.flatnonzero(allowed.ravel())
    # highest quotient first; ties: earlier source, then earlier slot
    order = np.lexsort((j[None, :].repeat(len(names), 0).ravel()[cand], src.ravel()[cand], -quot.ravel()[cand]))
    won = np.bincount(src.ravel()[cand][order[:extra]], minlength=len(names))
    return {s: int(lo[i] + won[i]) for i, s in enumerate(names)}


def merge_sources(candidates: Mapping[str, Sequence[int]], slots: Mapping[str, int], k: int,
                  values: Mapping[str, float] | None = None) -> tuple[list[int], list[str]]:
    """Merge ranked per-source lists into at most ``k`` distinct ids: ``(ids, source of each)``.

    Sources go in order of decreasing value (ties: their order in ``candidates``); each takes its
    best ids not already taken, up to its slots. Slots left because a list ran out (or overlapped)
    then go to the next unused ids of the sources, in the same order.
    """
    names = list(candidates)
    rank = {s: i for i, s in enumerate(names)}
    order = sorted(names, key=lambda s: (-(values or {}).get(s, 0.0), rank[s]))
    taken: dict[int, str] = {}
    cursor = {s: 0 for s in names}
    for full in (False, True):
        for s in order:
            lst, got = candidates[s], sum(1 for v in taken.values() if v == s)
            while cursor[s] < len(lst) and len(taken) < k and (full or got < slots.get(s, 0)):
                item = int(lst[cursor[s]])
                cursor[s] += 1
                if item not in taken:
                    taken[item] = s
                    got += 1
    return list(taken), list(taken.values())


class DynamicQuota:
    """Logged outcomes per source -> slot split for the next request (recomputed on every call)."""

    def __init__(self, sources: Sequence[str], *, half_life: float = 3600.0, prior_rate: float = 0.01,
                 prior_weight: float = 10.0, floors: Mapping[str, int] | None = None,
                 caps: Mapping[str, int] | None = None, max_log: int = 100_000):
        if len(set(sources)) != len(sources) or not sources:
            raise ValueError(f"sources must be distinct names, got {list(sources)}")
        self.sources = list(sources)
        self.half_life, self.prior_rate, self.prior_weight = half_life, prior_rate, prior_weight
        self.floors, self.caps, self.max_log = dict(floors or {}), dict(caps or {}), max_log
        self._log: list[tuple[str, float, bool]] = []

    def record(self, source: str, time: float, converted: bool) -> None:
        if source not in self.sources:
            raise ValueError(f"unknown source {source!r}; sources are {self.sources}")
        self._log.append((source, float(time), bool(converted)))
        del self._log[:-self.max_log]

    def values(self, now: float) -> dict[str, float]:
        cols = list(zip(*self._log)) if self._log else ([], [], [])
        return estimate_values(self.sources, np.asarray(cols[0], dtype=object), cols[1], cols[2], now=now,
                               half_life=self.half_life, prior_rate=self.prior_rate,
                               prior_weight=self.prior_weight)

    def select(self, candidates: Mapping[str, Sequence[int]], k: int, now: float) -> tuple[list[int], list[str]]:
        """Allocate ``k`` slots by current values (caps also bounded by list lengths) and merge."""
        values = self.values(now)
        caps = {s: min(self.caps.get(s, k), len(candidates.get(s, ()))) for s in self.sources}
        floors = {s: min(self.floors.get(s, 0), caps[s]) for s in self.sources}
        slots = allocate(k, values, floors, caps)
        return merge_sources({s: candidates.get(s, ()) for s in self.sources}, slots, k, values)
