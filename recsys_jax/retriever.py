"""Retrieve from Python: top-k items for user histories, in the ORIGINAL ids of the training data.

    r = recsys_jax.Retriever.from_checkpoint("runs/recsys/hstu_ml1m")
    items, scores = r.recommend(["1193", "661", "914"], k=10)          # one history, oldest first
    batch_items, batch_scores = r.recommend([["1193", "661"], ["2355"]], k=10)  # a batch

The saved id map is applied both ways (ids may be given as str or int; results are the original id
strings). Histories longer than the model's window keep their most recent items; every given item is
excluded from the results with ``exclude_history=True``. An id the training data never had is an
error naming it, or skipped with ``unknown="skip"``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from recsys_jax.data.sequences import IdMap, pad_sequence
from recsys_jax.eval.evaluate import user_embeddings
from recsys_jax.eval.metrics import top_k

UNKNOWN = ("error", "skip")
_INT32_MAX = np.iinfo(np.int32).max


class UnknownItemError(ValueError):
    """A history holds an item id that is not in the training data's id map."""


def _bucket(n: int) -> int:
    """Next power of two (bounded recompilation for varying batch sizes and history lengths)."""
    return 1 << max(0, int(n) - 1).bit_length()


@nnx.jit(static_argnames=("k",))
def _retrieve(model, table, item_ids, timestamps, exclude, k):
    user = user_embeddings(model, item_ids, timestamps)
    return top_k(user, table, k, exclude)


def _is_batch(history) -> bool:
    if isinstance(history, (str, bytes)) or not isinstance(history, (Sequence, np.ndarray)):
        raise TypeError(f"history must be a list of item ids (or a list of such lists), got {type(history).__name__}")
    if len(history) == 0:
        return False
    first = history[0]
    return isinstance(first, (Sequence, np.ndarray)) and not isinstance(first, (str, bytes))


class Retriever:
    """Top-k retrieval with a trained sequential model over its whole item table.

    ``model``: a recsys_jax model (``model(item_ids, timestamps, deterministic=True)``,
    ``model.item_embeddings()``); ``item_map``: original item id <-> dense id; ``max_len``: history
    window; ``side_info``: per dense id dicts (titles ...) or None; ``uses_timestamps``: whether the
    training data had timestamps (then histories without them get a warning).
    """

    def __init__(self, model: nnx.Module, item_map: IdMap, *, max_len: int, padding: str = "left",
                 side_info: list | None = None, uses_timestamps: bool = False):
        if padding not in ("left", "right"):
            raise ValueError(f"padding must be 'left' or 'right', got {padding!r}")
        if len(item_map) != model.num_items:
            raise ValueError(f"id map has {len(item_map)} items but the model has {model.num_items}")
        self.model = model
        self.item_map = item_map
        self.max_len = int(max_len)
        self.padding = padding
        self.side_info = side_info
        self.uses_timestamps = bool(uses_timestamps) and bool(getattr(model.cfg, "use_time_bias", False))
        self.table = model.item_embeddings()  # [N + 1, D], computed once
        self._warned_timestamps = False
        self.step: int | None = None  # the checkpoint's step and kind ("best" / "latest"), from_checkpoint only
        self.which: str | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, which: str = "auto", padding: str | None = None,
                        overrides: Sequence[str] = ()) -> "Retriever":
        """Load a run folder (``train.run_dir`` of ``recsys-jax train``): its ``which`` checkpoint
        ("best", "latest", or "auto": best when the run kept one) and its saved id maps."""
        from recsys_jax.train.restore import restore_run, run_dataset_info
        from recsys_jax.train.task import RUN_DATASET_DIR

        path = os.fspath(path)
        run = restore_run(path, which=which, overrides=overrides)
        folder = os.path.join(path, RUN_DATASET_DIR)
        with open(os.path.join(folder, "id_maps.json"), encoding="utf-8") as f:
            item_map = IdMap.from_json(json.load(f)["items"])
        side = None
        if os.path.isfile(os.path.join(folder, "items.json")):
            with open(os.path.join(folder, "items.json"), encoding="utf-8") as f:
                side = json.load(f)
        info = run_dataset_info(path)
        r = cls(run.model(), item_map, max_len=run.cfg.data.max_len, padding=padding or run.cfg.data.padding,
                side_info=side, uses_timestamps=info.get("has_timestamps", False))
        r.step, r.which = run.step, run.which
        return r

    @property
    def num_items(self) -> int:
        return len(self.item_map)

    def item_info(self, item_id) -> dict | None:
        """Side info (title, genres ...) of an original item id, or None."""
        dense = self._dense(item_id)
        return self.side_info[dense] if self.side_info and dense is not None else None

    def _dense(self, item_id) -> int | None:
        key = str(item_id)
        return self.item_map.to_dense(key) if key in self.item_map else None

    def _prepare(self, history, timestamps, unknown: str, row: int | None):
        where = "" if row is None else f" of history {row}"
        if timestamps is not None and len(timestamps) != len(history):
            raise ValueError(f"timestamps{where} has {len(timestamps)} values but the history has {len(history)} items")
        ids, ts = [], []
        for i, item in enumerate(history):
            dense = self._dense(item)
            if dense is None:
                if unknown == "skip":
                    continue
                raise UnknownItemError(
                    f"unknown item id {item!r} at position {i}{where}: not among the {self.num_items} items of the "
                    "training data (pass unknown='skip' to ignore unknown ids)")
            ids.append(dense)
            ts.append(0 if timestamps is None else int(timestamps[i]))
        if not ids:
            raise ValueError(f"history{where} is empty" + (" after skipping unknown ids" if len(history) else "")
                             + ": at least one known item is needed")
        ts_arr = np.asarray(ts, np.int64)
        if np.any(np.abs(ts_arr) > _INT32_MAX):
            raise ValueError(f"timestamps{where} must be unix seconds within int32 range, got {ts_arr.max()}")
        return np.asarray(ids, np.int32), ts_arr.astype(np.int32)

    def recommend(self, history, timestamps=None, k: int = 100, exclude_history: bool = True,
                  unknown: str = "error"):
        """Top-``k`` items after ``history`` (original ids, oldest first) or a batch of histories.

        ``timestamps``: unix seconds per history item (same shape as ``history``), for models with
        time features. Returns ``(items, scores)``: a list of original ids and a float32 array,
        best first (fewer than ``k`` when exclusion leaves fewer items); for a batch, one list and
        one array per history.
        """
        if unknown not in UNKNOWN:
            raise ValueError(f"unknown must be one of {UNKNOWN}, got {unknown!r}")
        if not 1 <= int(k) <= self.num_items:
            raise ValueError(f"k must be in [1, {self.num_items}] (the number of items), got {k}")
        batch = _is_batch(history)
        histories = list(history) if batch else [history]
        if timestamps is None:
            stamps = [None] * len(histories)
        else:
            stamps = list(timestamps) if batch else [timestamps]
            if len(stamps) != len(histories):
                raise ValueError(f"timestamps has {len(stamps)} rows but there are {len(histories)} histories")
        rows = [self._prepare(h, t, unknown, i if batch else None) for i, (h, t) in enumerate(zip(histories, stamps))]
        if timestamps is None and self.uses_timestamps and not self._warned_timestamps:
            warnings.warn("the model was trained with timestamps but none were given: using 0 for every item, "
                          "which removes its time features (pass timestamps=... for the best results)", stacklevel=2)
            self._warned_timestamps = True

        b = _bucket(len(rows))
        m = _bucket(max(len(ids) for ids, _ in rows)) if exclude_history else 0
        item_ids = np.zeros((b, self.max_len), np.int32)
        ts = np.zeros((b, self.max_len), np.int32)
        exclude = np.zeros((b, m), np.int32)
        for i, (ids, t) in enumerate(rows):
            item_ids[i] = pad_sequence(ids, self.max_len, padding=self.padding, dtype=np.int32)
            ts[i] = pad_sequence(t, self.max_len, padding=self.padding, dtype=np.int32)
            if m:
                exclude[i, :len(ids)] = ids
        item_ids[len(rows):] = item_ids[0]  # bucket padding rows: copies of a real row (discarded)
        ts[len(rows):] = ts[0]
        scores, dense = _retrieve(self.model, self.table, jnp.asarray(item_ids), jnp.asarray(ts),
                                  jnp.asarray(exclude) if m else None, int(k))
        scores, dense = np.asarray(scores), np.asarray(dense)
        out_items, out_scores = [], []
        for i in range(len(rows)):
            keep = dense[i] > 0
            out_items.append([self.item_map.to_original(j) for j in dense[i][keep]])
            out_scores.append(scores[i][keep].astype(np.float32))
        if batch:
            return out_items, out_scores
        return out_items[0], out_scores[0]
