"""The event log: one row per user action, stored column by column (numpy arrays of int codes).

An event is ``(user, item, timestamp, action, surface, is_ad, advertiser, campaign, value)``;
``action`` and ``surface`` are codes into configurable vocabularies (:class:`Vocab`), ``advertiser``
and ``campaign`` are dense ids (``-1``: none), ``value`` is a float (NaN: none). Items carry
``is_ad``, ``advertiser`` and ``category`` (arrays indexed by dense item id, ``[0]`` = padding).
Per-event label fields (e.g. ``conversions``: the attributed-conversion credit a click received, see
:mod:`recsys_jax.data.attribution`) live in :attr:`EventLog.labels`.

Ids follow :mod:`recsys_jax.data.sequences`: users ``0..U-1``, items ``1..N`` (``0`` = padding),
kept with their :class:`IdMap`. :meth:`EventLog.sorted` orders rows by user, then timestamp (stable:
equal timestamps keep their log order) and :meth:`EventLog.user_offsets` gives each user's slice, so a
sequence model reads one user's time-ordered ``item``, ``action``, ``surface``, ``is_ad`` and
``timestamp`` arrays with :meth:`EventLog.user_events`.

Single-action data (MovieLens, RecBole, text) maps to a log with one action
(:func:`events_from_interactions`); MovieLens ratings map to behaviours (``rating >= 4`` -> "like",
else "view") with ``rating_actions``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence

import numpy as np

from recsys_jax.data import formats
from recsys_jax.data.formats import Interaction
from recsys_jax.data.sequences import IdMap, Sequences

DEFAULT_ACTIONS = ("impression", "click", "save", "ad_click", "conversion", "purchase")
DEFAULT_SURFACES = ("home", "search", "related")
UNKNOWN_SURFACE = "unknown"
# event columns (per row) and their dtypes; label columns are float32
EVENT_FIELDS = {"user": np.int64, "item": np.int32, "timestamp": np.int64, "action": np.int16,
                "surface": np.int16, "is_ad": np.bool_, "advertiser": np.int32, "campaign": np.int32,
                "value": np.float32}
ITEM_FIELDS = {"is_ad": np.bool_, "advertiser": np.int32, "category": np.int32}


@dataclasses.dataclass(frozen=True)
class Vocab:
    """A closed vocabulary of names; ``code(name)`` is its index."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        if not names:
            raise ValueError("a vocabulary needs at least one name")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"vocabulary {list(names)} repeats {dup}")
        object.__setattr__(self, "names", names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def code(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not in the vocabulary {list(self.names)}") from None

    def codes(self, names: Sequence[str]) -> np.ndarray:
        uniq, codes = _factorize(names)
        return np.array([self.code(n) for n in uniq], dtype=np.int16)[codes] if uniq else np.zeros(0, np.int16)


@dataclasses.dataclass
class EventLog:
    """Columnar events (``[E]`` arrays, one row per event) with their vocabularies and item table.

    ``labels``: per-event label columns (float32 ``[E]``), e.g. ``conversions`` (attributed credit on
    click events) and ``conversion_value``. ``advertisers`` / ``campaigns``: dense id -> original id.
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    action: np.ndarray
    surface: np.ndarray
    is_ad: np.ndarray
    advertiser: np.ndarray
    campaign: np.ndarray
    value: np.ndarray
    actions: Vocab
    surfaces: Vocab
    item_map: IdMap
    user_map: IdMap
    item_is_ad: np.ndarray  # [N + 1]
    item_advertiser: np.ndarray  # [N + 1], -1: none
    item_category: np.ndarray  # [N + 1], -1: none
    advertisers: list[str] = dataclasses.field(default_factory=list)
    campaigns: list[str] = dataclasses.field(default_factory=list)
    categories: list[str] = dataclasses.field(default_factory=list)
    labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    has_timestamps: bool = True

    def __post_init__(self) -> None:
        for name, dtype in EVENT_FIELDS.items():
            setattr(self, name, np.asarray(getattr(self, name), dtype=dtype))
        for name, dtype in ITEM_FIELDS.items():
            setattr(self, "item_" + name, np.asarray(getattr(self, "item_" + name), dtype=dtype))
        self.labels = {k: np.asarray(v, np.float32) for k, v in self.labels.items()}
        self.validate()

    def __len__(self) -> int:
        return len(self.user)

    @property
    def num_users(self) -> int:
        return len(self.user_map)

    @property
    def num_items(self) -> int:
        return len(self.item_map)

    def validate(self) -> None:
        """Raise ValueError naming every column whose length or range is wrong."""
        n, problems = len(self.user), []
        for name in list(EVENT_FIELDS) + [f"labels[{k!r}]" for k in self.labels]:
            col = self.labels[name[8:-2]] if name.startswith("labels") else getattr(self, name)
            if col.shape != (n,):
                problems.append(f"{name} has shape {col.shape}, expected ({n},)")
        for name in ITEM_FIELDS:
            col = getattr(self, "item_" + name)
            if col.shape != (self.num_items + 1,):
                problems.append(f"item_{name} has shape {col.shape}, expected ({self.num_items + 1},)")
        if not problems and n:
            checks = (("user", self.user, 0, self.num_users - 1), ("item", self.item, 1, self.num_items),
                      ("action", self.action, 0, len(self.actions) - 1),
                      ("surface", self.surface, 0, len(self.surfaces) - 1),
                      ("advertiser", self.advertiser, -1, len(self.advertisers) - 1),
                      ("campaign", self.campaign, -1, len(self.campaigns) - 1))
            for name, col, lo, hi in checks:
                if col.min() < lo or col.max() > hi:
                    problems.append(f"{name} codes span [{col.min()}, {col.max()}], expected within [{lo}, {hi}]")
        if problems:
            raise ValueError("bad EventLog: " + "; ".join(problems))

    # ---------------------------------------------------------------------------------------------

    def take(self, index: np.ndarray) -> "EventLog":
        """The rows ``index`` (an int index or a boolean mask), same vocabularies and item table."""
        rows = {name: getattr(self, name)[index] for name in EVENT_FIELDS}
        labels = {k: v[index] for k, v in self.labels.items()}
        return dataclasses.replace(self, **rows, labels=labels)

    def order(self) -> np.ndarray:
        """Row order by user, then timestamp; stable, so equal timestamps keep their log order."""
        return np.lexsort((self.timestamp, self.user))

    def sorted(self) -> "EventLog":
        return self.take(self.order())

    def user_offsets(self) -> np.ndarray:
        """``[U + 1]`` row offsets of each user's events (the log must be :meth:`sorted`)."""
        if len(self.user) > 1 and np.any(np.diff(self.user) < 0):
            raise ValueError("user_offsets needs a log sorted by user: call .sorted() first")
        return np.searchsorted(self.user, np.arange(self.num_users + 1), side="left")

    def user_events(self, user: int, offsets: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One user's time-ordered columns (and labels) from a sorted log."""
        offsets = self.user_offsets() if offsets is None else offsets
        sl = slice(int(offsets[user]), int(offsets[user + 1]))
        out = {name: getattr(self, name)[sl] for name in EVENT_FIELDS if name != "user"}
        out.update({k: v[sl] for k, v in self.labels.items()})
        return out

    def action_counts(self) -> dict[str, int]:
        counts = np.bincount(self.action, minlength=len(self.actions))
        return {name: int(c) for name, c in zip(self.actions.names, counts)}

    def with_action(self, rows: np.ndarray, name: str) -> "EventLog":
        """A copy with ``action`` of ``rows`` set to ``name`` (added to the vocabulary if new)."""
        actions = self.actions if name in self.actions else Vocab(self.actions.names + (name,))
        action = self.action.copy()
        action[rows] = actions.code(name)
        return dataclasses.replace(self, action=action, actions=actions, labels=dict(self.labels))

    def compact_users(self) -> "EventLog":
        """Drop users without events (e.g. after filtering actions); the rest keep their order."""
        present = np.zeros(self.num_users, bool)
        present[self.user] = True
        if present.all():
            return self
        new_id = np.cumsum(present) - 1
        keys = [k for k, p in zip(self.user_map.keys, present) if p]
        return dataclasses.replace(self, user=new_id[self.user], user_map=IdMap(keys), labels=dict(self.labels))

    def truncated(self, max_seq_len: int | None) -> "EventLog":
        """The :meth:`sorted` log keeping each user's most recent ``max_seq_len`` events (None: all)."""
        log = self.sorted()
        if max_seq_len is None:
            return log
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1 (or None for no limit), got {max_seq_len}")
        offsets = log.user_offsets()
        rank_from_end = offsets[log.user + 1] - np.arange(len(log))  # 1 for a user's last event
        return log.take(rank_from_end <= max_seq_len)

    def to_sequences(self) -> Sequences:
        """Per-user item sequences (every action, time order) of a :meth:`sorted` log, for
        :func:`recsys_jax.data.builder.write_dataset`; every user needs at least one event."""
        offsets = self.user_offsets()
        lengths = np.diff(offsets)
        if len(lengths) and lengths.min() == 0:
            raise ValueError(f"user {self.user_map.to_original(int(np.argmin(lengths)))!r} has no events")
        bounds = offsets.tolist()
        items = [self.item[bounds[u]:bounds[u + 1]] for u in range(self.num_users)]
        ts = [self.timestamp[bounds[u]:bounds[u + 1]] for u in range(self.num_users)]
        stats = {"interactions": int(len(self)), "users": self.num_users, "items": self.num_items}
        return Sequences(items, ts, self.item_map, self.user_map, self.has_timestamps, stats)

    def vocab_json(self) -> dict:
        """Vocabularies, id tables and the item table (JSON-ready), for the dataset folder."""
        return {"actions": list(self.actions.names), "surfaces": list(self.surfaces.names),
                "advertisers": list(self.advertisers), "campaigns": list(self.campaigns),
                "categories": list(self.categories), "item_is_ad": self.item_is_ad.astype(int).tolist(),
                "item_advertiser": self.item_advertiser.tolist(), "item_category": self.item_category.tolist(),
                "labels": sorted(self.labels)}


# ------------------------------------------------------------------------------------------------


def _factorize(values: Sequence) -> tuple[list, np.ndarray]:
    """Distinct values (first-seen order) and each value's index into them (a dict: fast on strings)."""
    index: dict = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), np.int64, count=len(values))
    return list(index), codes


def _dense(values: Sequence[str]) -> tuple[IdMap, np.ndarray]:
    """Dense ids (natural order of the originals) for ``values`` and the code of each one."""
    uniq, codes = _factorize(values)
    id_map = IdMap.build([str(u) for u in uniq], padding=False)
    remap = np.array([id_map.to_dense(str(u)) for u in uniq], dtype=np.int64)
    return id_map, remap[codes] if len(uniq) else np.zeros(0, np.int64)


def _optional_ids(values: Sequence[str | None]) -> tuple[list[str], np.ndarray]:
    """``None``/"" -> -1, others -> dense ids in natural order."""
    uniq, codes = _factorize(values)
    present = [str(u) for u in uniq if u not in (None, "")]
    id_map = IdMap.build(present, padding=False)
    remap = np.array([-1 if u in (None, "") else id_map.to_dense(str(u)) for u in uniq], dtype=np.int32)
    return list(id_map.keys), remap[codes] if len(uniq) else np.zeros(0, np.int32)


def make_event_log(
    *,
    user: Sequence[str],
    item: Sequence[str],
    timestamp: Sequence[int] | None,
    action: Sequence[str],
    surface: Sequence[str] | None = None,
    is_ad: Sequence[bool] | None = None,
    advertiser: Sequence[str | None] | None = None,
    campaign: Sequence[str | None] | None = None,
    value: Sequence[float | None] | None = None,
    category: Sequence[str | None] | None = None,
    actions: Sequence[str] | None = None,
    surfaces: Sequence[str] | None = None,
) -> EventLog:
    """An :class:`EventLog` from per-event columns of original ids and names.

    ``actions`` / ``surfaces``: the vocabularies (a name outside them is an error); ``None`` takes
    the names seen, in sorted order. Missing columns: surface ``"unknown"``, not an ad, no
    advertiser / campaign / value / category. An item's ``is_ad``, ``advertiser`` and ``category``
    come from its events (an item is an ad if any of its events says so; the last advertiser and
    category given win).
    """
    n = len(user)
    cols = {"item": item, "action": action, "timestamp": timestamp, "surface": surface, "is_ad": is_ad,
            "advertiser": advertiser, "campaign": campaign, "value": value, "category": category}
    for name, col in cols.items():
        if col is not None and len(col) != n:
            raise ValueError(f"column {name!r} has {len(col)} values, expected {n} (one per event)")
    surface = [UNKNOWN_SURFACE] * n if surface is None else list(surface)
    action_vocab = Vocab(tuple(actions) if actions is not None else tuple(sorted(set(action))) or ("interaction",))
    surface_vocab = Vocab(tuple(surfaces) if surfaces is not None else tuple(sorted(set(surface))) or (UNKNOWN_SURFACE,))
    for name, vocab, col in (("action", action_vocab, action), ("surface", surface_vocab, surface)):
        bad = sorted(set(col) - set(vocab.names))
        if bad:
            raise ValueError(f"{name} names {bad[:10]} are not in the {name} vocabulary {list(vocab.names)}")
    user_map, user_code = _dense(user)
    item_ids, item_code = _dense(item)
    item_map = IdMap([None] + list(item_ids.keys), offset=1)
    item_code = item_code + 1
    advertisers, adv_code = _optional_ids([None] * n if advertiser is None else advertiser)
    campaigns, camp_code = _optional_ids([None] * n if campaign is None else campaign)
    categories, cat_code = _optional_ids([None] * n if category is None else category)
    ad = np.zeros(n, bool) if is_ad is None else np.asarray(is_ad, bool)
    num_items = len(item_map)
    item_is_ad = np.zeros(num_items + 1, bool)
    item_is_ad[item_code[ad]] = True
    item_adv = np.full(num_items + 1, -1, np.int32)
    m = adv_code >= 0
    item_adv[item_code[m]] = adv_code[m]
    item_cat = np.full(num_items + 1, -1, np.int32)
    m = cat_code >= 0
    item_cat[item_code[m]] = cat_code[m]
    vals = (np.full(n, np.nan, np.float32) if value is None
            else np.array([np.nan if v is None else v for v in value], dtype=np.float32))
    return EventLog(
        user=user_code, item=item_code,
        timestamp=np.zeros(n, np.int64) if timestamp is None else np.asarray(timestamp, np.int64),
        action=action_vocab.codes(action), surface=surface_vocab.codes(surface), is_ad=ad,
        advertiser=adv_code, campaign=camp_code, value=vals, actions=action_vocab, surfaces=surface_vocab,
        item_map=item_map, user_map=user_map, item_is_ad=item_is_ad, item_advertiser=item_adv,
        item_category=item_cat, advertisers=advertisers, campaigns=campaigns, categories=categories,
        has_timestamps=timestamp is not None)


def events_from_interactions(interactions: Iterable[Interaction], *, action: str = "interaction",
                             rating_actions: tuple[float, str, str] | None = None) -> EventLog:
    """Single-action logs (MovieLens, RecBole, text, csv) as events.

    Every interaction becomes one event with ``action`` on surface "unknown"; with
    ``rating_actions=(threshold, high, low)`` (e.g. ``(4.0, "like", "view")``: the protocol of
    multi-behaviour sequential recommendation) the action is ``high`` when ``rating >= threshold``
    and ``low`` otherwise, and every interaction needs a rating.
    """
    users, items, times, acts = [], [], [], []
    with_ts = without_ts = 0
    for x in interactions:
        if rating_actions is not None:
            if x.rating is None:
                raise ValueError(f"rating behaviours need ratings, but line {x.line} has none "
                                 "(the input format or column mapping gives no rating)")
            acts.append(rating_actions[1] if x.rating >= rating_actions[0] else rating_actions[2])
        else:
            acts.append(action)
        users.append(x.user)
        items.append(x.item)
        if x.timestamp is None:
            without_ts += 1
            times.append(0)
        else:
            with_ts += 1
            times.append(int(x.timestamp))
    if with_ts and without_ts:
        raise ValueError("some interactions have timestamps and some do not; expected all or none")
    vocab = (rating_actions[2], rating_actions[1]) if rating_actions is not None else (action,)
    return make_event_log(user=users, item=items, timestamp=times if with_ts else None, action=acts,
                          actions=vocab)


def read_events(fmt: str, path, *, columns=None, actions: Sequence[str] | None = None,
                surfaces: Sequence[str] | None = None, default_action: str = "interaction",
                skip_bad_lines: bool = False, stats: formats.ReadStats | None = None) -> EventLog:
    """An event log from a CSV/TSV (``fmt="csv"``) or Parquet table with a column mapping over
    :data:`formats.EVENT_COLUMN_KEYS` (e.g. ``"user=uid,item=iid,time=ts,action=event,is_ad=ad"``).

    A row whose action or surface is outside the given vocabulary is a :class:`DataFormatError`
    naming the line, the value and the vocabulary (skipped and counted with ``skip_bad_lines``).
    Rows without an action column get ``default_action``.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"event logs are read from csv or parquet tables, not {fmt!r}")
    stats = stats if stats is not None else formats.ReadStats()
    reader = formats.read_csv_events if fmt == "csv" else formats.read_parquet_events
    cols: dict[str, list] = {k: [] for k in ("user", "item", "timestamp", "action", "surface", "is_ad",
                                             "advertiser", "campaign", "value", "category")}
    vocab = {"action": set(actions) if actions is not None else None,
             "surface": set(surfaces) if surfaces is not None else None}
    with_ts = without_ts = 0
    for row in reader(path, columns=columns, skip_bad_lines=skip_bad_lines, stats=stats):
        action = row.action if row.action is not None else default_action
        surface = row.surface if row.surface is not None else UNKNOWN_SURFACE
        try:
            for name, val, names in (("action", action, actions), ("surface", row.surface, surfaces)):
                if names is not None and val is not None and val not in vocab[name]:
                    raise formats.DataFormatError(f"{os.fspath(path)}:{row.line}: {name} {val!r} is not in the "
                                                  f"{name} vocabulary {list(names)}")
        except formats.DataFormatError as e:
            stats.bad(e, skip_bad_lines)
            continue
        with_ts += row.timestamp is not None
        without_ts += row.timestamp is None
        for key, val in (("user", row.user), ("item", row.item), ("timestamp", row.timestamp or 0),
                         ("action", action), ("surface", surface), ("is_ad", row.is_ad),
                         ("advertiser", row.advertiser), ("campaign", row.campaign), ("value", row.value),
                         ("category", row.category)):
            cols[key].append(val)
    if with_ts and without_ts:
        raise ValueError(f"{os.fspath(path)}: some events have timestamps and some do not; expected all or none")
    if not cols["user"]:
        raise formats.DataFormatError(f"{os.fspath(path)}: no events read ({stats.lines} lines, "
                                      f"{stats.bad_lines} skipped as malformed)")
    if surfaces is not None and UNKNOWN_SURFACE in cols["surface"] and UNKNOWN_SURFACE not in surfaces:
        surfaces = tuple(surfaces) + (UNKNOWN_SURFACE,)
    return make_event_log(user=cols["user"], item=cols["item"], timestamp=cols["timestamp"] if with_ts else None,
                          action=cols["action"], surface=cols["surface"], is_ad=cols["is_ad"],
                          advertiser=cols["advertiser"], campaign=cols["campaign"], value=cols["value"],
                          category=cols["category"], actions=actions, surfaces=surfaces)
