"""Leave-one-out splits over stored full sequences, and their fixed-length model inputs.

A user's stored sequence ``s`` (length ``n``, oldest first) is split as:

* ``train``: the prefix ``s[:n-2]`` trained autoregressively (inputs ``t[:-1]``, targets ``t[1:]``);
* ``validation``: predict ``s[n-2]`` from ``s[:n-2]``;
* ``test``: predict ``s[n-1]`` from the full prefix ``s[:n-1]`` (which includes the validation item).

Short users: ``n == 2`` is train only, on the whole sequence (one pair, never evaluated);
``n == 3`` is validation and test only (its training prefix has a single item, so no pair);
``n == 1`` is in no split (kept in the dataset, counted in the build report).

Inputs are padded with 0 to a fixed length (``padding="left"`` puts the most recent item at the last
position; ``"right"`` puts the real items first); longer histories keep their most recent items.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys_jax.data.sequences import pad_sequence

SPLITS = ("train", "validation", "test")


def train_length(n):
    """Length of the training prefix of a sequence of ``n`` items (an int, or elementwise for an array)."""
    return n - 2 * (n >= 3)


def in_split(n: int, split: str) -> bool:
    """Whether a user with ``n`` items has an example in ``split``."""
    if split == "train":
        return train_length(n) >= 2
    if split in ("validation", "test"):
        return n >= 3
    raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")


def split_counts(lengths) -> dict[str, int]:
    lengths = np.asarray(lengths)
    return {s: int(sum(in_split(int(n), s) for n in lengths)) for s in SPLITS} | {
        "users_in_no_split": int(np.sum(lengths < 2))}


def _arrays(example: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    items = np.asarray(example["items"], dtype=np.int32)
    ts = example.get("timestamps")
    ts = np.zeros(len(items), np.int64) if ts is None else np.asarray(ts, dtype=np.int64)
    if ts.shape != items.shape:
        raise ValueError(f"timestamps {ts.shape} and items {items.shape} must have the same length")
    return items, ts


def train_window(n: int, max_len: int, rng: np.random.Generator | None = None, *,
                 prefix: int | None = None) -> tuple[int, int]:
    """``[start, end)`` of the training prefix to use: at most ``max_len + 1`` items (``max_len``
    input/target pairs). Without ``rng`` the most recent window; with it a uniformly random one.
    ``prefix``: the training prefix's length (default :func:`train_length` of ``n``)."""
    m = train_length(n) if prefix is None else prefix
    if rng is None or m <= max_len + 1:
        end = m
    else:
        end = int(rng.integers(max_len + 1, m + 1))
    return max(0, end - max_len - 1), end


def train_example(example: dict[str, Any], *, max_len: int, padding: str = "left",
                  rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Autoregressive training inputs from a stored record ``{"user", "items", "timestamps"}``.

    Returns ``item_ids``, ``timestamps``, ``target_ids`` (the next item at each position, 0 = pad),
    ``target_timestamps`` and ``mask`` (bool, real positions), each ``[max_len]``, plus ``user``.
    ``rng`` picks a random window when the prefix is longer than ``max_len + 1`` (else the latest).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    items, ts = _arrays(example)
    start, end = train_window(len(items), max_len, rng)
    t_items, t_ts = items[start:end], ts[start:end]
    n_in = max(len(t_items) - 1, 0)
    pad = lambda v, dt: pad_sequence(v, max_len, padding=padding, dtype=dt)  # noqa: E731
    return {
        "user": np.int32(example.get("user", -1)),
        "item_ids": pad(t_items[:n_in], np.int32),
        "timestamps": pad(t_ts[:n_in], np.int64),
        "target_ids": pad(t_items[1:], np.int32),
        "target_timestamps": pad(t_ts[1:], np.int64),
        "mask": pad(np.ones(n_in, np.int32), np.int32).astype(bool),
    }


def eval_example(example: dict[str, Any], *, split: str, max_len: int, padding: str = "left") -> dict[str, np.ndarray]:
    """Inputs to predict the held-out item of ``split`` ("validation" or "test").

    Returns ``item_ids`` / ``timestamps`` (the history, ``[max_len]``, most recent kept),
    ``length`` (real history items), ``target_id``, ``target_timestamp``, ``user`` and ``valid``
    (False for the empty records that pad an evaluation set to whole batches).
    """
    if split not in ("validation", "test"):
        raise ValueError(f"eval_example split must be 'validation' or 'test', got {split!r}")
    items, ts = _arrays(example)
    n = len(items)
    if n == 0:  # padding record
        z = np.zeros(max_len, np.int32)
        return {"user": np.int32(-1), "item_ids": z, "timestamps": z.astype(np.int64), "length": np.int32(0),
                "target_id": np.int32(0), "target_timestamp": np.int64(0), "valid": np.bool_(False)}
    if n < 3:
        raise ValueError(f"user {example.get('user')} has {n} items; {split} needs at least 3")
    t = n - 2 if split == "validation" else n - 1
    hist, hist_ts = items[:t][-max_len:], ts[:t][-max_len:]
    return {
        "user": np.int32(example.get("user", -1)),
        "item_ids": pad_sequence(hist, max_len, padding=padding, dtype=np.int32),
        "timestamps": pad_sequence(hist_ts, max_len, padding=padding, dtype=np.int64),
        "length": np.int32(len(hist)),
        "target_id": np.int32(items[t]),
        "target_timestamp": np.int64(ts[t]),
        "valid": np.bool_(True),
    }


class RecordSubset:
    """Random-access view of ``source`` at ``indices``; index ``-1`` gives an empty padding record."""

    def __init__(self, source, indices):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.indices[i])
        if j < 0:
            return {"user": -1, "items": np.zeros(0, np.int32), "timestamps": np.zeros(0, np.int64)}
        return self.source[j]

    def __repr__(self) -> str:
        return f"RecordSubset({len(self)} of {len(self.source)} records)"


def split_indices(lengths, split: str, *, pad_to_multiple: int = 1) -> np.ndarray:
    """Record indices with an example in ``split``, padded with ``-1`` to a multiple of ``pad_to_multiple``."""
    idx = np.array([i for i, n in enumerate(np.asarray(lengths)) if in_split(int(n), split)], dtype=np.int64)
    if pad_to_multiple > 1 and len(idx) % pad_to_multiple:
        idx = np.concatenate([idx, -np.ones(pad_to_multiple - len(idx) % pad_to_multiple, np.int64)])
    return idx
