"""Retrieve from Python: top-k items for user histories, in the ORIGINAL ids of the training data.

    r = recsys_jax.Retriever.from_checkpoint("runs/recsys/hstu_ml1m")
    items, scores = r.recommend(["1193", "661", "914"], k=10)          # one history, oldest first
    batch_items, batch_scores = r.recommend([["1193", "661"], ["2355"]], k=10)  # a batch
    items, scores, source = r.recommend(history, k=300,                 # quotas and other sources
                                        quotas={"per_advertiser": 3, "categories": {"Drama": {"max": 50}}},
                                        sources={"two_tower": tt_ids, "popular": popular_ids})

The saved id map is applied both ways (ids may be given as str or int; results are the original id
strings). Histories longer than the model's window keep their most recent items; every given item is
excluded from the results with ``exclude_history=True``. An id the training data never had is an
error naming it, or skipped with ``unknown="skip"``. The items are searched by an
:class:`~recsys_jax.serving.ItemIndex` over the model's item table (ties: the lower dense id first).
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from recsys_jax.data.sequences import IdMap, pad_sequence
from recsys_jax.eval.evaluate import user_embeddings
from recsys_jax.serving.candidates import MODEL_SOURCE, combine, model_candidates, parse_quotas
from recsys_jax.serving.index import ItemIndex

UNKNOWN = ("error", "skip")
_INT32_MAX = np.iinfo(np.int32).max


class UnknownItemError(ValueError):
    """A history holds an item id that is not in the training data's id map."""


def _bucket(n: int) -> int:
    """Next power of two (bounded recompilation for varying batch sizes and history lengths)."""
    return 1 << max(0, int(n) - 1).bit_length()


_users = nnx.jit(user_embeddings)


def _attribute(side: dict, keys: Sequence[str]):
    """The first of ``keys`` present in an item's side info (the first element of a list value)."""
    for key in keys:
        v = side.get(key)
        if isinstance(v, list):
            v = v[0] if v else None
        if v not in (None, ""):
            return str(v)
    return None


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
    training data had timestamps (then histories without them get a warning). ``advertiser`` /
    ``category``: original item id -> label, for quotas (default: the side info's ``advertiser``, and
    its ``category`` or first ``genres`` / ``tags`` value). ``index_dtype`` / ``mesh``: the
    :class:`~recsys_jax.serving.ItemIndex` storage and mesh.
    """

    def __init__(self, model: nnx.Module, item_map: IdMap, *, max_len: int, padding: str = "left",
                 side_info: list | None = None, uses_timestamps: bool = False,
                 advertiser: Mapping | None = None, category: Mapping | None = None,
                 index_dtype: str = "float32", mesh=None):
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
        n = self.num_items
        self.index = ItemIndex(np.asarray(self.table)[1:n + 1], ids=np.arange(1, n + 1), dtype=index_dtype, mesh=mesh)
        self.set_item_attributes(advertiser=advertiser, category=category)
        self._warned_timestamps = False
        self.step: int | None = None  # the checkpoint's step and kind ("best" / "latest"), from_checkpoint only
        self.which: str | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, which: str = "auto", padding: str | None = None,
                        overrides: Sequence[str] = (), **kwargs) -> "Retriever":
        """Load a run folder (``train.run_dir`` of ``recsys-jax train``): its ``which`` checkpoint
        ("best", "latest", or "auto": best when the run kept one) and its saved id maps; ``kwargs``
        go to the constructor."""
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
                side_info=side, uses_timestamps=info.get("has_timestamps", False), **kwargs)
        r.step, r.which = run.step, run.which
        return r

    @property
    def num_items(self) -> int:
        return len(self.item_map)

    def item_info(self, item_id) -> dict | None:
        """Side info (title, genres ...) of an original item id, or None."""
        dense = self._dense(item_id)
        return self.side_info[dense] if self.side_info and dense is not None else None

    @functools.cached_property
    def _rows(self) -> np.ndarray:
        """[N, D] float32 rows as the index scores them (row i = dense id i + 1): built on first use (scoring
        items that only another source proposed), so a retriever without sources holds no second copy."""
        return self.index.stored()

    def set_item_attributes(self, advertiser: Mapping | None = None, category: Mapping | None = None) -> None:
        """Advertiser and category of each item (original id -> label; missing: none) for ``quotas``.

        ``None`` takes them from the side info (see the class doc)."""
        def codes(mapping, keys):
            labels = [None] * (self.num_items + 1)
            if mapping is not None:
                for item, label in mapping.items():
                    dense = self._dense(item)
                    if dense is None:
                        raise ValueError(f"item attributes name an unknown item id {item!r}")
                    labels[dense] = None if label is None else str(label)
            elif self.side_info:
                labels = [None] + [_attribute(self.side_info[i] or {}, keys) for i in range(1, self.num_items + 1)]
            vocab = {x: i for i, x in enumerate(sorted({x for x in labels if x is not None}))}
            return np.asarray([-1 if x is None else vocab[x] for x in labels], np.int32), vocab

        self._advertiser, self.advertisers = codes(advertiser, ("advertiser",))
        self._category, self.categories = codes(category, ("category", "genres", "tags"))

    def _dense(self, item_id) -> int | None:
        key = str(item_id)
        return self.item_map.to_dense(key) if key in self.item_map else None

    def prepare(self, history, timestamps=None, unknown: str = "error", row: int | None = None):
        """One history (original ids) -> ``(dense ids int32, timestamps int32)``; unknown ids per ``unknown``."""
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

    def dense_ids(self, items: Sequence, unknown: str = "error", what: str = "items") -> np.ndarray:
        """Original ids -> dense ids (unknown ids per ``unknown``; ``what`` names the list in errors)."""
        out = []
        for i, item in enumerate(items):
            dense = self._dense(item)
            if dense is None:
                if unknown == "skip":
                    continue
                raise UnknownItemError(f"unknown item id {item!r} at position {i} of {what}")
            out.append(dense)
        return np.asarray(out, np.int64)

    def user_vectors(self, rows) -> np.ndarray:
        """``[len(rows), D]`` user embeddings of prepared histories (:meth:`prepare`)."""
        b = _bucket(len(rows))
        item_ids = np.zeros((b, self.max_len), np.int32)
        ts = np.zeros((b, self.max_len), np.int32)
        for i, (ids, t) in enumerate(rows):
            item_ids[i] = pad_sequence(ids, self.max_len, padding=self.padding, dtype=np.int32)
            ts[i] = pad_sequence(t, self.max_len, padding=self.padding, dtype=np.int32)
        item_ids[len(rows):] = item_ids[0]  # bucket padding rows: copies of a real row (discarded)
        ts[len(rows):] = ts[0]
        return np.asarray(_users(self.model, jnp.asarray(item_ids), jnp.asarray(ts)))[:len(rows)]

    def rank(self, users: np.ndarray, rows, k: int, *, exclude_history: bool = True, quotas: Mapping | None = None,
             sources: Sequence[Mapping[str, Sequence[int]]] | None = None, values: Mapping[str, float] | None = None,
             floors: Mapping[str, int] | None = None, caps: Mapping[str, int] | None = None,
             pool: int | None = None):
        """Per user ``(dense ids, scores, source of each or None)``; ``sources``: per user, name -> dense ids.

        See :mod:`recsys_jax.serving.candidates` for how quotas and sources combine.
        """
        exclude = [ids for ids, _ in rows] if exclude_history else None
        spec = parse_quotas(quotas, k, self.categories) if quotas is not None else None
        adv, cat = self._advertiser[1:], self._category[1:]
        # histories up to the window's length share one exclusion width (one compiled search per batch size)
        cands = model_candidates(self.index, users, exclude, k, spec, advertiser=adv, category=cat, pool=pool,
                                 min_exclude=self.max_len)
        if spec is None and sources is None:
            return [(ids, scores.astype(np.float32), None) for ids, scores in cands]
        out = []
        for u, (ids, scores) in enumerate(cands):
            extra = None
            if sources is not None:
                hist = set(rows[u][0].tolist()) if exclude_history else set()
                extra = {s: [int(i) for i in lst if int(i) not in hist] for s, lst in sources[u].items()}
            final, src = combine(ids, scores, k, spec, sources=extra, values=values, floors=floors, caps=caps,
                                 advertiser_of=self._advertiser.__getitem__, category_of=self._category.__getitem__)
            known = dict(zip(ids.tolist(), scores.tolist()))
            fs = np.asarray([known[i] if i in known else float(self._rows[i - 1] @ users[u]) for i in final.tolist()],
                            np.float32)
            out.append((final, fs, src))
        return out

    def recommend(self, history, timestamps=None, k: int = 100, exclude_history: bool = True,
                  unknown: str = "error", quotas: Mapping | None = None, sources: Mapping | None = None,
                  allocator=None, now: float | None = None, pool: int | None = None):
        """Top-``k`` items after ``history`` (original ids, oldest first) or a batch of histories.

        ``timestamps``: unix seconds per history item (same shape as ``history``), for models with
        time features. Returns ``(items, scores)``: a list of original ids and a float32 array,
        best first (fewer than ``k`` when exclusion leaves fewer items); for a batch, one list and
        one array per history.

        ``quotas``: ``{"per_advertiser": m, "categories": {name: {"min": a, "max": b}}}`` over the
        items' advertiser and category (:meth:`set_item_attributes`); the model's candidates are its
        top ``pool`` (default ``4 k``) plus the best of each category with a minimum.
        ``sources``: other candidate sources, name -> ranked original ids (for a batch, one list per
        history); ``k`` is split between them and this model (the source ``"model"``) by their
        values -- ``allocator``'s (a :class:`~recsys_jax.serving.quotas.DynamicQuota` over the same
        names, values from its logged outcomes at ``now``, with its floors and caps), else equal --
        and duplicates are dropped; a third list then gives each item's source. Scores are always this
        model's. Quotas apply to the merged list. Deterministic.
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
        rows = [self.prepare(h, t, unknown, i if batch else None) for i, (h, t) in enumerate(zip(histories, stamps))]
        if timestamps is None and self.uses_timestamps and not self._warned_timestamps:
            warnings.warn("the model was trained with timestamps but none were given: using 0 for every item, "
                          "which removes its time features (pass timestamps=... for the best results)", stacklevel=2)
            self._warned_timestamps = True
        per_user = None
        values = floors = caps = None
        if sources is not None:
            per_user = self._dense_sources(sources, len(rows), batch, unknown)
            names = [MODEL_SOURCE, *sources]
            if allocator is not None:
                if list(allocator.sources) != names:
                    raise ValueError(f"allocator sources {list(allocator.sources)} must be {names} "
                                     f"('{MODEL_SOURCE}' = this model, then the given sources in order)")
                import time

                values = allocator.values(time.time() if now is None else now)
                floors, caps = allocator.floors, allocator.caps
        ranked = self.rank(self.user_vectors(rows), rows, int(k), exclude_history=exclude_history, quotas=quotas,
                           sources=per_user, values=values, floors=floors, caps=caps, pool=pool)
        out_items = [[self.item_map.to_original(j) for j in ids] for ids, _, _ in ranked]
        out_scores = [scores for _, scores, _ in ranked]
        out_sources = [src for _, _, src in ranked]
        if not batch:
            out_items, out_scores, out_sources = out_items[0], out_scores[0], out_sources[0]
        return (out_items, out_scores) if sources is None else (out_items, out_scores, out_sources)

    def _dense_sources(self, sources: Mapping, b: int, batch: bool, unknown: str):
        if not isinstance(sources, Mapping) or MODEL_SOURCE in sources:
            raise ValueError(f"sources must map source names (not '{MODEL_SOURCE}', this model) to ranked item ids")
        per_user = [{} for _ in range(b)]
        for name, lists in sources.items():
            lists = list(lists) if batch else [lists]
            if len(lists) != b:
                raise ValueError(f"sources[{name!r}] has {len(lists)} lists but there are {b} histories")
            for u, lst in enumerate(lists):
                if isinstance(lst, (str, bytes)) or not isinstance(lst, (Sequence, np.ndarray)):
                    raise TypeError(f"sources[{name!r}] must be a list of item ids"
                                    + (" per history" if batch else "") + f", got {type(lst).__name__}")
                per_user[u][name] = self.dense_ids(lst, unknown, f"sources[{name!r}]")
        return per_user
