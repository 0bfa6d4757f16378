"""Full histories for long- and short-term models: strictly-before cutoffs, future windows, batches.

Protocol (``recsys_jax.train.longshort``): a user with ``n`` events (full history, oldest first) is
queried at ``q = n - window``: the events ``[q, n)`` are the *future window* (its first is the
next-item target) and are never trained on; training uses the prefix ``[0, q)``. The long-term input
for a query at time ``t`` is every event with timestamp ``< t`` (:func:`history_before`): events at
the query's own timestamp or later never enter it.
"""

from __future__ import annotations

import numpy as np

from recsys_jax.data.sequences import pad_sequence


def history_before(items: np.ndarray, timestamps: np.ndarray, t: int, max_len: int,
                   skip_recent: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The user's events with timestamp strictly before ``t`` (the most recent ``max_len``), leaving out the
    ``skip_recent`` most recent of them; inputs sorted by time."""
    before = int(np.searchsorted(timestamps, t, side="left"))  # events [0, before) are strictly before t
    end = max(0, before - skip_recent)
    start = max(0, end - max_len)
    return items[start:end], timestamps[start:end]


def bucket_length(n: int, lo: int = 64, hi: int = 4096) -> int:
    """Next power of two of ``n`` within ``[lo, hi]`` (bounded recompilation over batch shapes)."""
    return min(hi, max(lo, 1 << max(0, int(n) - 1).bit_length()))


def query_position(n: int, window: int) -> int:
    """Index of the first future-window event of a user with ``n`` events (``-1``: too short to evaluate)."""
    q = n - window
    return q if q >= 2 else -1


def long_inputs(histories: list[tuple[np.ndarray, np.ndarray]], as_of: np.ndarray, max_len: int) -> dict:
    """Left-padded long-term encoder inputs ``items``, ``timestamps`` ``[B, L]`` (L bucketed), ``as_of [B]``."""
    length = bucket_length(max((len(h[0]) for h in histories), default=1), hi=max_len)
    return {"items": np.stack([pad_sequence(h[0], length) for h in histories]),
            "timestamps": np.stack([pad_sequence(h[1], length, dtype=np.int32) for h in histories]),
            "as_of": np.asarray(as_of, np.int32)}


def future_window(items: np.ndarray, start: int, end: int, window: int) -> np.ndarray:
    """``items[start:min(start + window, end)]`` padded with 0 to ``window``."""
    return pad_sequence(items[start:min(start + window, end)], window, padding="right")


def dense_targets(items: np.ndarray, positions: np.ndarray, end: int, window: int) -> np.ndarray:
    """``[len(positions), window]``: for each input position ``i``, the events ``i+1 .. i+window`` before ``end``."""
    return np.stack([future_window(items, int(i) + 1, end, window) for i in positions]) if len(positions) else \
        np.zeros((0, window), np.int32)


def long_train_batch(items: list[np.ndarray], timestamps: list[np.ndarray], train_end: np.ndarray, users: np.ndarray,
                     rng: np.random.Generator, *, max_len: int, window: int, short_len: int = 0,
                     skip_recent: int = 0) -> dict:
    """Dense all-action examples: a random cutoff ``c`` in each user's training prefix, the history strictly
    before ``ts[c]`` and the (up to ``window``) events from ``c`` on as targets (``targets [B, window]``).
    ``short_len > 0`` adds the short model's input at the same cutoff: ``short_ids`` / ``short_ts``
    ``[B, short_len]``, the last ``short_len`` events before ``c`` (as the evaluation queries it).
    ``skip_recent``: the long input leaves out the most recent events (:func:`history_before`)."""
    hists, as_of, targets, short_ids, short_ts = [], [], [], [], []
    for u in users:
        m = int(train_end[u])
        c = int(rng.integers(1, m))
        hists.append(history_before(items[u], timestamps[u], timestamps[u][c], max_len, skip_recent))
        as_of.append(timestamps[u][c])
        targets.append(future_window(items[u], c, m, window))
        if short_len:
            s = max(0, c - short_len)
            short_ids.append(pad_sequence(items[u][s:c], short_len))
            short_ts.append(pad_sequence(timestamps[u][s:c], short_len, dtype=np.int32))
    batch = {**long_inputs(hists, np.asarray(as_of), max_len), "targets": np.stack(targets)}
    if short_len:
        batch.update(short_ids=np.stack(short_ids), short_ts=np.stack(short_ts))
    return batch


def short_train_batch(items: list[np.ndarray], timestamps: list[np.ndarray], train_end: np.ndarray, users: np.ndarray,
                      rng: np.random.Generator, *, short_len: int, window: int, long_len: int = 0,
                      long_skip_recent: int = 0) -> dict:
    """A random window of ``short_len`` inputs from each user's training prefix, with per-position dense targets
    ``[B, short_len, window]`` (next ``window`` events inside the prefix).

    ``long_len > 0`` adds long-term inputs as of a random cutoff ``c`` inside the window (events strictly before
    ``ts[c]``) and ``mask`` keeps only the positions whose targets all come at or after ``c`` -- the long-term
    embedding never saw a target (no leakage), at staleness 0 to ``short_len`` events as a daily table has;
    ``long_skip_recent``: the long input leaves out its most recent events (:func:`history_before`).
    """
    out = {k: [] for k in ("item_ids", "timestamps", "targets", "mask")}
    hists, as_of = [], []
    for u in users:
        m = int(train_end[u])
        end = int(rng.integers(2, m + 1)) if m > short_len + 1 else m  # inputs [s, end - 1), targets up to end
        s = max(0, end - 1 - short_len)
        pos = np.arange(s, end - 1)
        n_pad = short_len - len(pos)
        out["item_ids"].append(pad_sequence(items[u][s:end - 1], short_len))
        out["timestamps"].append(pad_sequence(timestamps[u][s:end - 1], short_len, dtype=np.int32))
        out["targets"].append(np.concatenate([np.zeros((n_pad, window), np.int32), dense_targets(items[u], pos, m,
                                                                                               window)]))
        keep = np.ones(len(pos), bool)
        if long_len:
            c = int(rng.integers(s + 1, end))  # the long cutoff: at least the first target onward
            keep = pos + 1 >= c
            hists.append(history_before(items[u], timestamps[u], timestamps[u][c], long_len, long_skip_recent))
            as_of.append(timestamps[u][c])
        out["mask"].append(np.concatenate([np.zeros(n_pad, bool), keep]))
    batch = {k: np.stack(v) for k, v in out.items()}
    if long_len:
        batch["long"] = long_inputs(hists, np.asarray(as_of), long_len)
    return batch
