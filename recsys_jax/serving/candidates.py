"""One request's final list: the index's candidates, other candidate sources, and quotas, combined.

:func:`select` is what ``Retriever.recommend(..., quotas=, sources=)`` runs, per user:

1. **The model's candidates** (one batched :meth:`ItemIndex.search`): the top ``pool`` items
   (history excluded, the advertiser cap applied inside the program), plus, for each category with a
   minimum, the top ``2 * min + 8`` (rounded up to a power of two) items of that category (a masked search), merged by score
   (ties: lower id). Without quotas the model's list is its top ``k``.
2. **Sources** (``sources``: name -> ranked dense ids): the budget ``k`` is split by
   :func:`~recsys_jax.serving.quotas.allocate` (D'Hondt on the sources' values, floors and caps, each
   cap also bounded by its list's length), the model being the source ``"model"``, and the lists are
   merged without duplicates by :func:`~recsys_jax.serving.quotas.merge_sources`, best source
   first; every remaining candidate follows, as the overflow that refills slots a quota frees.
3. **Quotas** (:func:`~recsys_jax.serving.quotas.apply_quotas` over that ranking): at most
   ``per_advertiser`` items of one advertiser, per-category ``max``, and ``min`` whenever the
   candidates allow. Without quotas the first ``k`` of the ranking are kept.

Deterministic: the same inputs give the same list. Scores are the model's score of each item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from recsys_jax.serving.index import ItemIndex, _bucket
from recsys_jax.serving.quotas import allocate, apply_quotas, merge_sources

MODEL_SOURCE = "model"
QUOTA_KEYS = ("per_advertiser", "categories")


@dataclass(frozen=True)
class QuotaSpec:
    """Parsed quotas: ``per_advertiser`` cap, and per category code its ``min`` / ``max``."""

    per_advertiser: int | None = None
    cat_min: dict[int, int] = field(default_factory=dict)
    cat_max: dict[int, int] = field(default_factory=dict)


def parse_quotas(quotas: Mapping, k: int, category_codes: Mapping[str, int]) -> QuotaSpec:
    """``{"per_advertiser": 3, "categories": {"Action": {"min": 2, "max": 10}, ...}}`` -> a :class:`QuotaSpec`.

    A category bound may also be a plain integer (its maximum). Errors name the offending key.
    """
    if not isinstance(quotas, Mapping):
        raise ValueError(f"quotas must be a mapping with keys {QUOTA_KEYS}, got {type(quotas).__name__}")
    extra = set(quotas) - set(QUOTA_KEYS)
    if extra:
        raise ValueError(f"quotas has unknown keys {sorted(extra)}; expected some of {QUOTA_KEYS}")
    cap = quotas.get("per_advertiser")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1):
        raise ValueError(f"quotas['per_advertiser'] must be an integer >= 1, got {cap!r}")
    cats = quotas.get("categories") or {}
    if not isinstance(cats, Mapping):
        raise ValueError("quotas['categories'] must map a category to {'min': m, 'max': n} (or to a maximum)")
    lo, hi = {}, {}
    for name, bound in cats.items():
        where = f"quotas['categories'][{name!r}]"
        if str(name) not in category_codes:
            known = sorted(category_codes)
            raise ValueError(f"{where}: unknown category; the items' categories are {known[:20]}"
                             + (" ..." if len(known) > 20 else ""))
        if isinstance(bound, Mapping):
            bad = set(bound) - {"min", "max"}
            if bad:
                raise ValueError(f"{where} has unknown keys {sorted(bad)}; expected 'min' and/or 'max'")
            m, x = bound.get("min", 0), bound.get("max", k)
        else:
            m, x = 0, bound
        for what, v in (("min", m), ("max", x)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{where}: {what} must be an integer >= 0, got {v!r}")
        if m > x:
            raise ValueError(f"{where}: min={m} > max={x}")
        code = category_codes[str(name)]
        if m:
            lo[code] = int(m)
        hi[code] = int(x)
    if sum(lo.values()) > k:
        raise ValueError(f"quotas['categories'] minimums add up to {sum(lo.values())} > k={k}")
    return QuotaSpec(None if cap is None else int(cap), lo, hi)


def _merge_by_score(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated candidate lists -> distinct ids by score (ties: lower id); -1 slots dropped."""
    keep = ids >= 0
    ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))
    ids, scores = ids[order], scores[order]
    _, first = np.unique(ids, return_index=True)
    first.sort()
    return ids[first], scores[first]


def model_candidates(index: ItemIndex, users: np.ndarray, exclude, k: int, spec: QuotaSpec | None, *,
                     advertiser: np.ndarray, category: np.ndarray, pool: int | None = None, min_exclude: int = 0,
                     mask: np.ndarray | None = None):
    """Per user ``(ids, scores)`` of the model's candidates (step 1 of the module doc).

    ``advertiser`` / ``category``: per index row (aligned with the index's embeddings), -1 = none;
    ``min_exclude``: see :meth:`ItemIndex.search`; ``mask``: per index row, the eligible items (None: all).
    """
    n = index.num_items
    if spec is None:
        size, groups, cap = k, None, None
    else:
        size = min(n, pool or 4 * k)
        groups, cap = (advertiser, spec.per_advertiser) if spec.per_advertiser else (None, None)
    ids, scores = index.search(users, size, exclude=exclude, mask=mask, groups=groups, per_group_cap=cap,
                               min_exclude=min_exclude)
    parts = [(ids, scores)]
    for code, m in sorted((spec.cat_min if spec else {}).items()):
        in_cat = (category == code) if mask is None else (category == code) & mask
        count = int(in_cat.sum())
        if count:
            parts.append(index.search(users, min(count, _bucket(2 * m + 8)), exclude=exclude, mask=in_cat, groups=groups,
                                      per_group_cap=cap, min_exclude=min_exclude))
    if len(parts) == 1:
        return [(i[i >= 0], s[i >= 0]) for i, s in zip(ids, scores)]
    out = []
    for row in range(len(users)):
        out.append(_merge_by_score(np.concatenate([p[0][row] for p in parts]),
                                   np.concatenate([p[1][row] for p in parts])))
    return out


def combine(model_ids, model_scores, k: int, spec: QuotaSpec | None, *, sources: Mapping[str, Sequence[int]] | None,
            values: Mapping[str, float] | None, floors: Mapping[str, int] | None, caps: Mapping[str, int] | None,
            advertiser_of, category_of):
    """One user's final ``(ids, source of each)`` from the model's candidates and other sources (steps 2-3).

    ``advertiser_of`` / ``category_of``: functions from an id array to its advertiser / category codes.
    """
    if sources:
        lists = {MODEL_SOURCE: [int(i) for i in model_ids], **{s: list(v) for s, v in sources.items()}}
        names = list(lists)
        vals = {s: float((values or {}).get(s, 1.0)) for s in names}
        cap = {s: min(int((caps or {}).get(s, k)), len(lists[s])) for s in names}
        floor = {s: min(int((floors or {}).get(s, 0)), cap[s]) for s in names}
        slots = allocate(k, vals, floor, cap)
        ranking, src = merge_sources(lists, slots, sum(len(v) for v in lists.values()), vals)
        ranking = np.asarray(ranking, np.int64)
    else:
        ranking, src = np.asarray(model_ids, np.int64), None
    if spec is None:
        keep = np.arange(min(k, len(ranking)))
    elif len(ranking) == 0:
        keep = np.zeros(0, np.int64)
    else:
        width = _bucket(len(ranking), 8)  # a few list widths: the quota walk compiles per width
        padded = np.full(width, -1, np.int64)
        padded[:len(ranking)] = ranking
        safe = np.maximum(padded, 0)
        adv = np.where(padded >= 0, advertiser_of(safe), -1)[None]
        cat = np.where(padded >= 0, category_of(safe), -1)[None]
        pos = apply_quotas(padded[None], k, advertiser=adv if spec.per_advertiser else None,
                           per_advertiser=spec.per_advertiser, category=cat if spec.cat_min or spec.cat_max else None,
                           cat_min=spec.cat_min, cat_max=spec.cat_max)[0]
        keep = pos[pos >= 0]
    return ranking[keep], (None if src is None else [src[i] for i in keep])
