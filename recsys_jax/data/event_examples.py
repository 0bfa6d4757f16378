"""Training examples from an event dataset: per-event inputs and per-label next-event targets.

A **label** names what a position can be trained to predict about the NEXT event of the sequence
(:class:`LabelConfig`): the target event's action must be one of ``actions``, its record field
``field`` (e.g. ``conversions``, the attributed-conversion credit of an ad click, see
:mod:`recsys_jax.data.attribution`) must be > 0 when given, and its item must be in the label's
candidate ``pool`` (``ads``, ``organic`` or ``all`` items, from the item table of ``events.json``).
For example (:data:`DEFAULT_LABELS`): ``engagement`` = the next event is an organic click, save or
purchase; ``ad_click`` = the next event is an ad click; ``conversion`` = the next event is an ad click
that earned an attributed conversion.

From a record (``items``, ``timestamps``, ``actions``, ``surfaces``, ``is_ad`` and the label fields,
oldest first) the training part is the leave-one-out prefix of :mod:`recsys_jax.data.splits` (the last
two events are kept for validation and test). A window of ``w + 1`` events ``e_0..e_w`` gives ``w``
positions: position ``i`` INPUTS event ``e_i`` only (item, timestamp, action, surface, is_ad; the model
is causal, so the prediction at ``i`` sees ``e_0..e_i``) and its TARGET is ``e_{i+1}``: its item, its
surface (the scenario's surface: what a request would name) and ``label_mask[i, l]`` = whether
``e_{i+1}`` has label ``l``. A position trains exactly the labels its next event has; a label field
of ``e_{i+1}`` (a conversion credited later) is never an input.

``target_window`` (``unified.target_window``) replaces the next event by a later one: position ``i``'s
target is drawn uniformly (per epoch) from the training events after ``e_i`` within that window of its
time (:func:`future_targets`; at least ``e_{i+1}``). Next-event targets teach the current session's
intent; a time-split evaluation asks for the next days' events (new sessions, new intents), which the
window targets train for (the dense "future window" objective of PinnerFormer, Pancha et al. 2022).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from recsys_jax.data.sequences import pad_sequence
from recsys_jax.data.splits import train_window

POOLS = ("all", "ads", "organic")
INPUT_FIELDS = ("actions", "surfaces", "is_ad")


@dataclasses.dataclass
class LabelConfig:
    """One training label (see the module docstring); ``weight`` scales its loss."""

    name: str = "engagement"
    actions: list[str] = dataclasses.field(default_factory=lambda: ["click", "save", "purchase"])
    field: str | None = None  # a record label field that must be > 0 at the target event (e.g. conversions)
    pool: Literal["all", "ads", "organic"] = "all"  # candidate items (targets outside it are not trained)
    weight: float = 1.0


DEFAULT_LABELS = (
    LabelConfig("engagement", ["click", "save", "purchase"], None, "all", 1.0),
    LabelConfig("ad_click", ["ad_click"], None, "ads", 1.0),
    LabelConfig("conversion", ["ad_click"], "conversions", "ads", 1.0),
)


@dataclasses.dataclass(frozen=True)
class LabelTables:
    """Labels compiled against a dataset's vocabularies (numpy; picklable for Grain workers)."""

    names: tuple[str, ...]
    action_ok: np.ndarray  # [num_labels, num_actions] bool
    fields: tuple[str | None, ...]
    pool: np.ndarray  # [num_labels, N + 1] bool (row 0, padding, False)
    weights: np.ndarray  # [num_labels] float32

    def __len__(self) -> int:
        return len(self.names)

    def code(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"label {name!r} is not one of the trained labels {list(self.names)}")
        return self.names.index(name)

    def target_labels(self, record: dict[str, Any], rows: slice | np.ndarray,
                      cutoff: int | None = None) -> np.ndarray:
        """``[len(rows), num_labels]`` bool: which labels the events ``rows`` of ``record`` have; with a time
        split's ``cutoff``, a field label only if it was known before it (the record's ``<field>_delay``:
        seconds from the event to when its label happened, e.g. an attributed conversion after the click)."""
        items = np.asarray(record["items"])[rows]
        ok = self.action_ok[:, np.asarray(record["actions"], np.int64)[rows]].T & self.pool[:, items].T
        for l, name in enumerate(self.fields):
            if name is not None:
                ok[:, l] &= np.asarray(record[name])[rows] > 0
                if cutoff is not None and f"{name}_delay" in record:
                    delay = np.asarray(record[f"{name}_delay"], np.float64)[rows]
                    ok[:, l] &= np.asarray(record["timestamps"], np.float64)[rows] + delay < cutoff
        return ok


def compile_labels(labels, events: dict | None) -> LabelTables:
    """:class:`LabelTables` for ``labels`` against ``events`` (a dataset's ``events.json``); errors name
    the label and what the dataset offers."""
    if not events:
        raise ValueError("labels need an event dataset (events.json: build it with `recsys-jax data build "
                         "--events` or --format marketplace / completejourney)")
    if not labels:
        raise ValueError("at least one label is needed")
    names = [lab.name for lab in labels]
    if len(set(names)) != len(names):
        raise ValueError(f"label names must be unique, got {names}")
    actions = list(events["actions"])
    fields = set(events.get("fields", []))
    item_is_ad = np.asarray(events["item_is_ad"], bool)
    is_item = np.arange(len(item_is_ad)) > 0
    pool_of = {"all": is_item, "ads": is_item & item_is_ad, "organic": is_item & ~item_is_ad}
    action_ok = np.zeros((len(labels), len(actions)), bool)
    pools = []
    for l, lab in enumerate(labels):
        bad = [a for a in lab.actions if a not in actions]
        if not lab.actions or bad:
            raise ValueError(f"label {lab.name!r}: actions {bad or '[]'} are not in the dataset's action vocabulary "
                             f"{actions}")
        action_ok[l, [actions.index(a) for a in lab.actions]] = True
        if lab.field is not None and lab.field not in fields:
            raise ValueError(f"label {lab.name!r}: field {lab.field!r} is not a record field of the dataset "
                             f"{sorted(fields)}")
        if lab.pool not in POOLS:
            raise ValueError(f"label {lab.name!r}: pool {lab.pool!r}, expected one of {list(POOLS)}")
        if lab.weight < 0:
            raise ValueError(f"label {lab.name!r}: weight must be >= 0, got {lab.weight}")
        if not pool_of[lab.pool].any():
            raise ValueError(f"label {lab.name!r}: the dataset has no {lab.pool!r} items")
        pools.append(pool_of[lab.pool])
    return LabelTables(tuple(names), action_ok, tuple(lab.field for lab in labels), np.stack(pools),
                       np.asarray([lab.weight for lab in labels], np.float32))


def training_prefix(record: dict[str, Any], cutoff: int | None = None) -> int:
    """How many of the record's first events are training events: every event before ``cutoff`` (a
    time split: events are time-ordered), else the leave-one-out prefix (all but the last two)."""
    n = len(record["items"])
    if cutoff is None:
        return train_window(n, 1 << 30)[1]
    return int(np.searchsorted(np.asarray(record["timestamps"]), cutoff, side="left"))


def future_targets(timestamps: np.ndarray, start: int, n_in: int, prefix: int, window: int,
                   rng: np.random.Generator) -> np.ndarray:
    """``[n_in]`` target event indices of the input positions ``start..start + n_in - 1``: for the event
    at ``a``, one drawn uniformly from the training events after it (``a + 1 .. prefix - 1``) that
    happen before ``timestamps[a] + window`` (always at least the next event ``a + 1``)."""
    a = np.arange(start, start + n_in)
    if n_in == 0:
        return a
    hi = np.searchsorted(timestamps[:prefix], timestamps[a] + window, side="left")
    hi = np.clip(hi, a + 2, prefix)  # exclusive end: at least a + 1, never past the training prefix
    return a + 1 + np.floor(rng.random(n_in) * (hi - a - 1)).astype(np.int64)


def event_train_example(record: dict[str, Any], *, max_len: int, labels: LabelTables, padding: str = "left",
                        rng: np.random.Generator | None = None, cutoff: int | None = None,
                        target_window: int | None = None) -> dict[str, np.ndarray]:
    """Training inputs and per-label targets of one record (``[max_len]`` each, ``label_mask``
    ``[max_len, num_labels]``): ``item_ids``, ``timestamps``, ``actions``, ``surfaces``, ``is_ad`` (the
    input events), ``target_ids``, ``target_surfaces``, ``label_mask``, ``mask`` (real positions) and
    ``user``. ``rng`` picks a random window of a long prefix (else the most recent one). ``cutoff``
    (unix seconds): a time split, trained on the events before it only (:func:`training_prefix`).
    ``target_window`` (seconds; None or 0: the next event): each position's target is a later training
    event within that window (:func:`future_targets`, drawn with ``rng``, else seeded by the user)."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    missing = [k for k in ("items", "timestamps") + INPUT_FIELDS if k not in record]
    if missing:
        raise ValueError(f"record of user {record.get('user')} lacks the event fields {missing}: not an event dataset")
    n = len(record["items"])
    m = training_prefix(record, cutoff)
    start, end = train_window(n, max_len, rng, prefix=m)
    n_in = max(end - start - 1, 0)
    inp = slice(start, start + n_in)
    if target_window:
        tgt = future_targets(np.asarray(record["timestamps"], np.int64), start, n_in, m, target_window,
                             rng or np.random.default_rng(int(record.get("user", 0))))
    else:
        tgt = slice(start + 1, start + 1 + n_in)

    def pad(values, dtype):
        return pad_sequence(values, max_len, padding=padding, dtype=dtype)

    labels_at = labels.target_labels(record, tgt, cutoff) if n_in else np.zeros((0, len(labels)), bool)
    return {
        "user": np.int32(record.get("user", -1)),
        "item_ids": pad(np.asarray(record["items"])[inp], np.int32),
        "timestamps": pad(np.asarray(record["timestamps"])[inp], np.int64),
        "actions": pad(np.asarray(record["actions"])[inp], np.int32),
        "surfaces": pad(np.asarray(record["surfaces"])[inp], np.int32),
        "is_ad": pad(np.asarray(record["is_ad"])[inp], np.int32).astype(bool),
        "target_ids": pad(np.asarray(record["items"])[tgt], np.int32),
        "target_surfaces": pad(np.asarray(record["surfaces"])[tgt], np.int32),
        "label_mask": np.stack([pad(labels_at[:, l], np.int32) for l in range(len(labels))], axis=-1).astype(bool),
        "mask": pad(np.ones(n_in, np.int32), np.int32).astype(bool),
    }


def label_target_counts(records, labels: LabelTables, num_items: int, cutoff: int | None = None) -> np.ndarray:
    """``[num_labels, N + 1]`` how often each item is a training target of each label (the events
    ``1..m-1`` of each record's training prefix of length ``m``, see :func:`training_prefix`): the
    popularity behind logQ."""
    counts = np.zeros((len(labels), num_items + 1), np.int64)
    for i in range(len(records)):
        rec = records[i]
        m = training_prefix(rec, cutoff)
        if m < 2:
            continue
        rows = slice(1, m)
        has = labels.target_labels(rec, rows, cutoff)
        items = np.asarray(rec["items"])[rows]
        for l in range(len(labels)):
            np.add.at(counts[l], items[has[:, l]], 1)
    return counts
