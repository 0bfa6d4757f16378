"""Retrieve from Python: top-k items for user histories, in the ORIGINAL ids of the training data.

    r = recsys_jax.Retriever.from_checkpoint("runs/recsys/hstu_ml1m")
    items, scores = r.recommend(["1193", "661", "914"], k=10)          # one history, oldest first
    batch_items, batch_scores = r.recommend([["1193", "661"], ["2355"]], k=10)  # a batch
    items, scores, source = r.recommend(history, k=300,                 # quotas and other sources
                                        quotas={"per_advertiser": 3, "categories": {"Drama": {"max": 50}}},
                                        sources={"two_tower": tt_ids, "popular": popular_ids})

A unified (multi-label) run serves scenarios: the history's events and what is asked for::

    r = recsys_jax.Retriever.from_checkpoint("runs/recsys/unified_tiny")
    items, scores = r.recommend(history, timestamps, actions=["click", "ad_click", "save"],
                                surfaces=["home", "search", "home"], scenario=("conversion", "home"),
                                k=100, candidates="ads")   # default candidates: the label's pool

A long+short run (``recsys-jax longshort train``) serves a user id beside the recent events: the user's
long-term embedding is looked up in the run's stored table (``RUN_DIR/long_table.safetensors``)::

    r = recsys_jax.Retriever.from_checkpoint("runs/recsys/longshort_ml1m")
    items, scores = r.recommend(recent_items, recent_timestamps, user="42", k=50)

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

from recsys_jax.data.event_examples import POOLS, compile_labels
from recsys_jax.data.sequences import IdMap, pad_sequence
from recsys_jax.eval.evaluate import last_real, user_embeddings
from recsys_jax.eval.scenarios import parse_scenario, scenario_user_embeddings
from recsys_jax.serving.candidates import MODEL_SOURCE, combine, model_candidates, parse_quotas
from recsys_jax.serving.index import ItemIndex

UNKNOWN = ("error", "skip")
_INT32_MAX = np.iinfo(np.int32).max


class UnknownItemError(ValueError):
    """A history holds an item id that is not in the training data's id map."""


class EventInputError(ValueError):
    """Bad per-event inputs of a history; ``field``: ``"actions"`` or ``"surfaces"``."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _bucket(n: int) -> int:
    """Next power of two (bounded recompilation for varying batch sizes and history lengths)."""
    return 1 << max(0, int(n) - 1).bit_length()


_users = nnx.jit(user_embeddings)
_long_short_users = nnx.jit(lambda m, ids, ts, long: last_real(m(ids, ts, long, deterministic=True), ids > 0))


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
    :class:`~recsys_jax.serving.ItemIndex` storage and mesh. ``events``: the dataset's ``events.json``
    (action / surface vocabularies, ``item_is_ad``) and ``labels``: the run's ``unified.labels``, for
    a unified run (scenarios, event inputs, candidate pools). ``long_table``: a
    :class:`~recsys_jax.serving.long_table.LongTable` for a model conditioned on the long-term embedding
    (:class:`~recsys_jax.models.long_short.LongShortHSTU`); ``recommend`` then takes ``user=``.
    """

    def __init__(self, model: nnx.Module, item_map: IdMap, *, max_len: int, padding: str = "left",
                 side_info: list | None = None, uses_timestamps: bool = False,
                 advertiser: Mapping | None = None, category: Mapping | None = None,
                 index_dtype: str = "float32", mesh=None, events: Mapping | None = None,
                 labels: Sequence | None = None, long_table=None):
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
        self.events = dict(events) if events else None
        self.event_features = bool(getattr(model.cfg, "event_features", False))
        self.scenario_tower = bool(getattr(model.cfg, "num_scenario_labels", 0))
        if (self.event_features or labels) and not self.events:
            raise ValueError("a model with event inputs or labels needs the dataset's events (events.json)")
        self.labels = compile_labels(labels, self.events) if labels else None
        if self.scenario_tower and (self.labels is None or len(self.labels) != model.cfg.num_scenario_labels):
            raise ValueError(f"the model's scenario tower has {model.cfg.num_scenario_labels} labels: pass the run's "
                             "labels (unified.labels)")
        self.long_table = long_table
        if (getattr(model, "fusion", "none") != "none") != (long_table is not None):
            raise ValueError("a model conditioned on the long-term embedding needs long_table (and only it takes one)")
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
        if os.path.isfile(os.path.join(path, "longshort.json")):
            return cls.from_longshort(path, padding=padding, **kwargs)
        run = restore_run(path, which=which, overrides=overrides)
        folder = os.path.join(path, RUN_DATASET_DIR)
        with open(os.path.join(folder, "id_maps.json"), encoding="utf-8") as f:
            item_map = IdMap.from_json(json.load(f)["items"])
        side = None
        if os.path.isfile(os.path.join(folder, "items.json")):
            with open(os.path.join(folder, "items.json"), encoding="utf-8") as f:
                side = json.load(f)
        info = run_dataset_info(path)
        if os.path.isfile(os.path.join(folder, "events.json")):
            with open(os.path.join(folder, "events.json"), encoding="utf-8") as f:
                kwargs.setdefault("events", json.load(f))
        if run.cfg.unified.enabled:
            kwargs.setdefault("labels", run.cfg.unified.labels)
        r = cls(run.model(), item_map, max_len=run.cfg.data.max_len, padding=padding or run.cfg.data.padding,
                side_info=side, uses_timestamps=info.get("has_timestamps", False), **kwargs)
        r.step, r.which = run.step, run.which
        return r

    @classmethod
    def from_longshort(cls, path: str | os.PathLike, *, model: str = "both", padding: str | None = None,
                       **kwargs) -> "Retriever":
        """A long+short run folder: its ``model`` ("both": conditioned on the stored long-term table, or
        "short": the recent events only)."""
        from recsys_jax.serving.long_table import load_run

        if model not in ("both", "short"):
            raise ValueError(f"model must be 'both' or 'short' (the long encoder is served through the table), "
                             f"got {model!r}")
        cfg, models, item_map, table = load_run(os.fspath(path))
        return cls(models[model], item_map, max_len=cfg["short_len"], padding=padding or "left",
                   uses_timestamps=True, long_table=table if model == "both" else None, **kwargs)

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

    def prepare(self, history, timestamps=None, unknown: str = "error", row: int | None = None,
                actions=None, surfaces=None):
        """One history (original ids) -> ``(dense ids int32, timestamps int32)``, plus a dict of event
        inputs (``actions``, ``surfaces``, ``is_ad`` codes) when ``actions`` / ``surfaces`` (names, one per
        item) are given; unknown ids per ``unknown``."""
        where = "" if row is None else f" of history {row}"
        if timestamps is not None and len(timestamps) != len(history):
            raise ValueError(f"timestamps{where} has {len(timestamps)} values but the history has {len(history)} items")
        codes = self._event_codes(history, actions, surfaces, where)
        ids, ts, kept = [], [], []
        for i, item in enumerate(history):
            dense = self._dense(item)
            if dense is None:
                if unknown == "skip":
                    continue
                raise UnknownItemError(
                    f"unknown item id {item!r} at position {i}{where}: not among the {self.num_items} items of the "
                    "training data (pass unknown='skip' to ignore unknown ids)")
            ids.append(dense)
            kept.append(i)
            ts.append(0 if timestamps is None else int(timestamps[i]))
        if not ids:
            raise ValueError(f"history{where} is empty" + (" after skipping unknown ids" if len(history) else "")
                             + ": at least one known item is needed")
        ts_arr = np.asarray(ts, np.int64)
        if np.any(np.abs(ts_arr) > _INT32_MAX):
            raise ValueError(f"timestamps{where} must be unix seconds within int32 range, got {ts_arr.max()}")
        ids = np.asarray(ids, np.int32)
        if codes is None:
            return ids, ts_arr.astype(np.int32)
        ev = {k: v[kept] for k, v in codes.items()}
        ev["is_ad"] = np.asarray(self.events["item_is_ad"], bool)[ids]
        return ids, ts_arr.astype(np.int32), ev

    def _event_codes(self, history, actions, surfaces, where: str) -> dict | None:
        """Action / surface names of one history -> int32 codes (None when the model reads no events)."""
        if not self.event_features:
            if actions is not None or surfaces is not None:
                raise EventInputError("actions" if actions is not None else "surfaces",
                                      "this model reads item ids only: actions / surfaces are for models with "
                                      "event inputs (a unified run)")
            return None
        h = self.model.cfg
        out = {}
        for key, names, vocab, on in (("actions", actions, self.events["actions"], h.num_actions),
                                      ("surfaces", surfaces, self.events["surfaces"], h.num_surfaces)):
            if not on:
                out[key] = np.zeros(len(history), np.int32)
                continue
            if names is None:
                raise EventInputError(key, f"this model reads each event's {key[:-1]}: pass {key}=[...] (one name "
                                           f"per history item, from {list(vocab)})")
            if isinstance(names, str) or len(names) != len(history):
                raise EventInputError(key, f"{key}{where} must be a list of {len(history)} names (one per history "
                                           f"item), got {names!r}")
            bad = sorted({str(n) for n in names} - set(vocab))
            if bad:
                raise EventInputError(key, f"{key}{where}: {bad[:5]} not in the vocabulary {list(vocab)}")
            out[key] = np.asarray([list(vocab).index(str(n)) for n in names], np.int32)
        return out

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

    def user_vectors(self, rows, scenario: tuple[int, int] | None = None, long: np.ndarray | None = None) -> np.ndarray:
        """``[len(rows), D]`` user embeddings of prepared histories (:meth:`prepare`); ``scenario``:
        ``(label code, surface code)`` for a model with a scenario tower; ``long``: ``[len(rows), Dl]``
        long-term embeddings for a model conditioned on them."""
        b = _bucket(len(rows))
        fields = ("item_ids", "timestamps") + (("actions", "surfaces", "is_ad") if self.event_features else ())
        batch = {k: np.zeros((b, self.max_len), bool if k == "is_ad" else np.int32) for k in fields}
        for i, row in enumerate(rows):
            values = {"item_ids": row[0], "timestamps": row[1], **(row[2] if len(row) > 2 else {})}
            for k in fields:
                batch[k][i] = pad_sequence(values[k], self.max_len, padding=self.padding, dtype=batch[k].dtype)
        for k in fields:
            batch[k][len(rows):] = batch[k][0]  # bucket padding rows: copies of a real row (discarded)
        if self.long_table is not None:
            if long is None or len(long) != len(rows):
                raise ValueError("this model reads the users' long-term embeddings: pass long=[len(rows), D] "
                                 "(recommend(..., user=...) looks them up in the table)")
            lv = np.zeros((b, self.long_table.dim), np.float32)
            lv[:len(rows)] = long
            return np.asarray(_long_short_users(self.model, jnp.asarray(batch["item_ids"]),
                                                jnp.asarray(batch["timestamps"]), jnp.asarray(lv)))[:len(rows)]
        if not self.event_features and not self.scenario_tower:
            return np.asarray(_users(self.model, jnp.asarray(batch["item_ids"]),
                                     jnp.asarray(batch["timestamps"])))[:len(rows)]
        label, surface = scenario if scenario is not None else (0, 0)
        users = scenario_user_embeddings(self.model, {k: jnp.asarray(v) for k, v in batch.items()}, jnp.int32(label),
                                         jnp.int32(surface))
        return np.asarray(users)[:len(rows)]

    def candidate_mask(self, candidates: str | None, label: int | None = None) -> np.ndarray | None:
        """``[N]`` bool eligibility of dense ids ``1..N``: ``"ads"``, ``"organic"`` or ``"all"`` items,
        or (None) the pool of label ``label`` (None: every item)."""
        if candidates is None:
            return None if label is None or self.labels is None else self.labels.pool[label][1:]
        if candidates not in POOLS:
            raise ValueError(f"candidates must be one of {list(POOLS)}, got {candidates!r}")
        if not self.events:
            raise ValueError("candidates need the item table of an event dataset (events.json: is_ad per item)")
        is_ad = np.asarray(self.events["item_is_ad"], bool)[1:]
        return {"all": np.ones_like(is_ad), "ads": is_ad, "organic": ~is_ad}[candidates]

    def rank(self, users: np.ndarray, rows, k: int, *, exclude_history: bool = True, quotas: Mapping | None = None,
             sources: Sequence[Mapping[str, Sequence[int]]] | None = None, values: Mapping[str, float] | None = None,
             floors: Mapping[str, int] | None = None, caps: Mapping[str, int] | None = None,
             pool: int | None = None, mask: np.ndarray | None = None, repeat_weight: float = 0.0):
        """Per user ``(dense ids, scores, source of each or None)``; ``sources``: per user, name -> dense ids.
        ``mask``: ``[N]`` bool, the eligible items (dense ids ``1..N``; sources are filtered by it too);
        ``repeat_weight``: see :meth:`recommend`.

        See :mod:`recsys_jax.serving.candidates` for how quotas and sources combine.
        """
        if repeat_weight and exclude_history:
            raise ValueError("repeat_weight boosts the items of the history: pass exclude_history=False")
        # with the repeat prior the index searches the items outside the history, which keep the model's scores;
        # the history's items are scored here with the prior added (exact top-k of the fused score)
        exclude = [row[0] for row in rows] if exclude_history or repeat_weight else None
        spec = parse_quotas(quotas, k, self.categories) if quotas is not None else None
        adv, cat = self._advertiser[1:], self._category[1:]
        # histories up to the window's length share one exclusion width (one compiled search per batch size)
        cands = model_candidates(self.index, users, exclude, k, spec, advertiser=adv, category=cat, pool=pool,
                                 min_exclude=self.max_len, mask=mask)
        if repeat_weight:
            cands = [self._with_repeat(ids, scores, rows[u][0], users[u], repeat_weight, mask)
                     for u, (ids, scores) in enumerate(cands)]
            if spec is None:
                cands = [(ids[:k], scores[:k]) for ids, scores in cands]
        if spec is None and sources is None:
            return [(ids, scores.astype(np.float32), None) for ids, scores in cands]
        out = []
        for u, (ids, scores) in enumerate(cands):
            extra = None
            if sources is not None:
                hist = set(rows[u][0].tolist()) if exclude_history else set()
                extra = {s: [int(i) for i in lst if int(i) not in hist and (mask is None or mask[int(i) - 1])]
                         for s, lst in sources[u].items()}
            final, src = combine(ids, scores, k, spec, sources=extra, values=values, floors=floors, caps=caps,
                                 advertiser_of=self._advertiser.__getitem__, category_of=self._category.__getitem__)
            known = dict(zip(ids.tolist(), scores.tolist()))
            fs = np.asarray([known[i] if i in known else float(self._rows[i - 1] @ users[u]) for i in final.tolist()],
                            np.float32)
            out.append((final, fs, src))
        return out

    def _with_repeat(self, ids, scores, history, user, weight: float, mask):
        """The model's candidates outside ``history`` merged with the history's (eligible) items, each scored
        ``<user, item> + weight * log1p(its count in the history)``; best first, ties by the lower id."""
        items, counts = np.unique(np.asarray(history, np.int64), return_counts=True)
        if mask is not None:
            keep = np.asarray(mask, bool)[items - 1]
            items, counts = items[keep], counts[keep]
        fused = self._rows[items - 1] @ np.asarray(user, np.float32) + weight * np.log1p(counts)
        ids = np.concatenate([np.asarray(ids, np.int64), items])
        scores = np.concatenate([np.asarray(scores, np.float32), fused.astype(np.float32)])
        order = np.lexsort((ids, -scores))
        return ids[order], scores[order]

    def recommend(self, history, timestamps=None, k: int = 100, exclude_history: bool = True,
                  unknown: str = "error", quotas: Mapping | None = None, sources: Mapping | None = None,
                  allocator=None, now: float | None = None, pool: int | None = None, actions=None, surfaces=None,
                  scenario=None, candidates: str | None = None, user=None, repeat_weight: float = 0.0):
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

        Unified runs: ``actions`` / ``surfaces`` (names, one per history item; for a batch one list per
        history) are the events' inputs; ``scenario`` (``(label, surface)`` or ``"label:surface"``, e.g.
        ``("conversion", "home")``) picks the scenario tower's user embedding, required with a tower;
        ``candidates`` (``"ads"``, ``"organic"``, ``"all"``; default the scenario label's pool) limits the
        items returned (and the sources' items).

        ``repeat_weight`` (>= 0; with ``exclude_history=False``): each item's score is the model's plus
        ``repeat_weight * log1p(its count in the history)`` (:mod:`recsys_jax.eval.repeat_prior`; ``recsys-jax eval
        --repeat auto`` chooses one per scenario on the validation window), for items people buy again.

        Long+short runs: ``user`` (original user id; for a batch one per history) selects the stored
        long-term embedding; an id not in the table is an error, or with ``unknown="skip"`` a zero
        embedding (a user without long-term history).
        """
        if unknown not in UNKNOWN:
            raise ValueError(f"unknown must be one of {UNKNOWN}, got {unknown!r}")
        if not 1 <= int(k) <= self.num_items:
            raise ValueError(f"k must be in [1, {self.num_items}] (the number of items), got {k}")
        if not float(repeat_weight) >= 0:
            raise ValueError(f"repeat_weight must be >= 0, got {repeat_weight}")
        batch = _is_batch(history)
        histories = list(history) if batch else [history]
        if timestamps is None:
            stamps = [None] * len(histories)
        else:
            stamps = list(timestamps) if batch else [timestamps]
            if len(stamps) != len(histories):
                raise ValueError(f"timestamps has {len(stamps)} rows but there are {len(histories)} histories")
        per_event = {}
        for key, value in (("actions", actions), ("surfaces", surfaces)):
            per_event[key] = [None] * len(histories) if value is None else (list(value) if batch else [value])
            if len(per_event[key]) != len(histories):
                raise ValueError(f"{key} has {len(per_event[key])} rows but there are {len(histories)} histories")
        code = self.scenario_code(scenario)
        mask = self.candidate_mask(candidates, None if code is None else code[0])
        rows = [self.prepare(h, t, unknown, i if batch else None, per_event["actions"][i], per_event["surfaces"][i])
                for i, (h, t) in enumerate(zip(histories, stamps))]
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
        long = self.long_rows(user, len(rows), batch, unknown)
        ranked = self.rank(self.user_vectors(rows, code, long), rows, int(k), exclude_history=exclude_history,
                           quotas=quotas, sources=per_user, values=values, floors=floors, caps=caps, pool=pool,
                           mask=mask, repeat_weight=float(repeat_weight))
        out_items = [[self.item_map.to_original(j) for j in ids] for ids, _, _ in ranked]
        out_scores = [scores for _, scores, _ in ranked]
        out_sources = [src for _, _, src in ranked]
        if not batch:
            out_items, out_scores, out_sources = out_items[0], out_scores[0], out_sources[0]
        return (out_items, out_scores) if sources is None else (out_items, out_scores, out_sources)

    def long_rows(self, user, b: int, batch: bool, unknown: str) -> np.ndarray | None:
        """The long-term table's rows for ``user`` (None for a model without long-term input)."""
        if self.long_table is None:
            if user is not None:
                raise ValueError("user= is for a model conditioned on a long-term table (a long+short run)")
            return None
        if user is None:
            raise ValueError("this model reads the user's long-term embedding: pass user=<user id>"
                             + (" (one per history)" if batch else ""))
        users = list(user) if batch and not isinstance(user, (str, int)) else [user]
        if len(users) != b:
            raise ValueError(f"user has {len(users)} ids but there are {b} histories")
        return self.long_table.lookup(users, unknown)

    def scenario_code(self, scenario) -> tuple[int, int] | None:
        """``(label code, surface code)`` of a scenario (checked against the run's labels and surfaces)."""
        if scenario is None:
            if self.scenario_tower:
                raise ValueError(f"this model serves scenarios: pass scenario=(label, surface), labels "
                                 f"{list(self.labels.names)}, surfaces {list(self.events['surfaces'])}")
            return None
        if self.labels is None:
            raise ValueError("scenario needs a unified run (its labels): this model has none")
        return parse_scenario(scenario, self.labels.names, self.events["surfaces"])

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
