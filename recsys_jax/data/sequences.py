"""Interactions -> per-user item sequences with dense ids.

* Each user's interactions are sorted by timestamp with a STABLE sort: equal timestamps keep their
  file order (without timestamps the file order is the time order).
* Filters, in this order: ``min_rating`` (drop interactions rated below it), then
  ``min_user_interactions`` (drop users left with fewer), then ``max_seq_len`` (keep each user's most
  recent items). Every dropped interaction is counted in :attr:`Sequences.stats`.
* Dense ids over what is kept: items ``1..N`` (``0`` = padding), users ``0..U-1``. Both are assigned
  in natural order of the original id strings (numbers numerically, then other strings), so a file
  whose ids are already ``1..N`` keeps them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from recsys_jax.data.formats import Interaction


def natural_key(s: str) -> tuple:
    """Sort key: integers by value first, then every other string lexicographically."""
    try:
        return (0, int(s), s)
    except ValueError:
        return (1, 0, s)


@dataclasses.dataclass
class IdMap:
    """Original id strings <-> dense ids. ``keys[i]`` is the original id of dense id ``i``."""

    keys: list[str | None]
    offset: int = 0  # 1 for items (dense id 0 = padding, keys[0] is None), 0 for users

    def __post_init__(self) -> None:
        self._index = {k: i for i, k in enumerate(self.keys) if k is not None}

    def __len__(self) -> int:
        return len(self.keys) - self.offset

    def __contains__(self, key: object) -> bool:
        return str(key) in self._index

    def to_dense(self, key: str) -> int:
        try:
            return self._index[str(key)]
        except KeyError:
            raise KeyError(f"unknown original id {key!r}") from None

    def to_original(self, dense: int) -> str:
        dense = int(dense)
        if not self.offset <= dense < len(self.keys):
            raise KeyError(f"dense id {dense} out of range [{self.offset}, {len(self.keys) - 1}]")
        return self.keys[dense]  # type: ignore[return-value]

    def to_json(self) -> dict:
        """Both directions: ``{"to_dense": {original: dense}, "to_original": [original or null, ...]}``."""
        return {"to_dense": dict(self._index), "to_original": list(self.keys)}

    @classmethod
    def from_json(cls, data: dict) -> "IdMap":
        keys = list(data["to_original"])
        return cls(keys, offset=1 if keys and keys[0] is None else 0)

    @classmethod
    def build(cls, originals: Iterable[str], *, padding: bool) -> "IdMap":
        keys = sorted(set(originals), key=natural_key)
        return cls(([None] if padding else []) + keys, offset=1 if padding else 0)


@dataclasses.dataclass
class Sequences:
    """Dense per-user sequences: ``items[u]`` (int32, ids 1..N) and ``timestamps[u]`` (int64) for user u."""

    items: list[np.ndarray]
    timestamps: list[np.ndarray]
    item_map: IdMap
    user_map: IdMap
    has_timestamps: bool
    stats: dict[str, int]

    @property
    def num_items(self) -> int:
        return len(self.item_map)

    @property
    def num_users(self) -> int:
        return len(self.user_map)

    def item_counts(self, last: int = 0) -> np.ndarray:
        """``[N + 1]`` int64 occurrences of each item, leaving out each user's ``last`` items when
        the user has at least 3 (``last=2``: the training part of a leave-one-out split)."""
        counts = np.zeros(self.num_items + 1, dtype=np.int64)
        for seq in self.items:
            part = seq[: len(seq) - last] if last and len(seq) >= 3 else seq
            np.add.at(counts, part, 1)
        return counts


def build_sequences(
    interactions: Iterable[Interaction],
    *,
    min_rating: float | None = None,
    min_user_interactions: int = 0,
    max_seq_len: int | None = None,
) -> Sequences:
    """Group, filter, sort (stable, by timestamp), truncate and densely re-id ``interactions``."""
    if max_seq_len is not None and max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1 (or None for no limit), got {max_seq_len}")
    per_user: dict[str, list[tuple[int, str]]] = {}
    stats = {"interactions_read": 0, "filtered_rating": 0, "filtered_users": 0,
             "filtered_user_interactions": 0, "truncated_interactions": 0}
    with_ts = without_ts = 0
    first_missing: Interaction | None = None
    for x in interactions:
        stats["interactions_read"] += 1
        if min_rating is not None:
            if x.rating is None:
                raise ValueError(f"min_rating={min_rating} needs ratings, but line {x.line} has none "
                                 "(the input format or column mapping gives no rating)")
            if x.rating < min_rating:
                stats["filtered_rating"] += 1
                continue
        if x.timestamp is None:
            without_ts += 1
            first_missing = first_missing or x
            ts = 0
        else:
            with_ts += 1
            ts = int(x.timestamp)
        per_user.setdefault(x.user, []).append((ts, x.item))
    if with_ts and without_ts:
        raise ValueError("some interactions have timestamps and some do not "
                         f"(first without: line {first_missing.line}); expected all or none")

    kept: dict[str, list[tuple[int, str]]] = {}
    for user, events in per_user.items():
        if len(events) < min_user_interactions:
            stats["filtered_users"] += 1
            stats["filtered_user_interactions"] += len(events)
            continue
        events.sort(key=lambda e: e[0])  # list.sort is stable: equal timestamps keep file order
        if max_seq_len is not None and len(events) > max_seq_len:
            stats["truncated_interactions"] += len(events) - max_seq_len
            events = events[-max_seq_len:]
        kept[user] = events

    item_map = IdMap.build((item for events in kept.values() for _, item in events), padding=True)
    user_map = IdMap.build(kept, padding=False)
    items, timestamps = [], []
    for user in user_map.keys:
        events = kept[user]  # type: ignore[index]
        items.append(np.array([item_map.to_dense(i) for _, i in events], dtype=np.int32))
        timestamps.append(np.array([t for t, _ in events], dtype=np.int64))
    stats["interactions"] = sum(len(s) for s in items)
    stats["users"] = len(user_map)
    stats["items"] = len(item_map)
    return Sequences(items, timestamps, item_map, user_map, has_timestamps=bool(with_ts), stats=stats)


def dense_side_info(item_map: IdMap, side_info: dict[str, dict] | None
                    ) -> tuple[list[dict | None] | None, dict[str, int]]:
    """Side info keyed by original id -> a list indexed by dense id (``[0]`` and unknown items: None)."""
    if not side_info:
        return None, {}
    out: list[dict | None] = [None] * (len(item_map) + 1)
    missing = 0
    for dense in range(1, len(item_map) + 1):
        info = side_info.get(item_map.to_original(dense))
        out[dense] = info
        missing += info is None
    unused = sum(1 for k in side_info if k not in item_map)
    return out, {"items_without_side_info": missing, "side_info_without_interactions": unused}


def pad_sequence(values: Sequence[int] | np.ndarray, length: int, *, padding: str = "left",
                 dtype=np.int32) -> np.ndarray:
    """Keep the last ``length`` values and pad with 0 on the ``padding`` side ("left" or "right")."""
    if padding not in ("left", "right"):
        raise ValueError(f"padding must be 'left' or 'right', got {padding!r}")
    values = np.asarray(values, dtype=dtype)[-length:] if length > 0 else np.zeros(0, dtype)
    out = np.zeros(length, dtype=dtype)
    if len(values):
        if padding == "left":
            out[length - len(values):] = values
        else:
            out[: len(values)] = values
    return out
