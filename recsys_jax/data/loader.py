"""Open a dataset folder written by :func:`recsys_jax.data.builder.build`: ids, counts, side info, and
Grain sources / iterators for the train, validation and test splits."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import numpy as np

from core_jax import data as data_lib
from recsys_jax.data.builder import SPLIT
from recsys_jax.data.sequences import IdMap
from recsys_jax.data.splits import SPLITS, RecordSubset, eval_example, split_indices, train_example, train_length


IN_MEMORY_MAX_USERS = 500_000
# side-info fields that describe an item in words (after its title), in the order item texts join them
TEXT_FIELDS = ("genres", "tags", "department", "category", "brand", "type", "description")


def find_dataset_dir(folder: str | os.PathLike) -> str:
    """``folder`` itself when it holds ``dataset_info.json``, else the single dataset below it
    (``<out>/<name>/<version>``, as ``recsys-jax data build --out`` writes it)."""
    folder = os.fspath(folder)
    if os.path.isfile(os.path.join(folder, "dataset_info.json")):
        return folder
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"dataset folder '{folder}' not found")
    found = []
    for root, dirs, files in os.walk(folder):
        if "dataset_info.json" in files:
            found.append(root)
            dirs.clear()
        elif os.path.relpath(root, folder).count(os.sep) >= 1:
            dirs.clear()  # look at most two levels down
    if len(found) != 1:
        what = "no dataset" if not found else f"{len(found)} datasets ({', '.join(sorted(found))})"
        raise FileNotFoundError(f"'{folder}' holds {what}; expected one folder built by 'recsys-jax data build'")
    return found[0]


def _load_json(folder: str, name: str) -> Any:
    with open(os.path.join(folder, name), encoding="utf-8") as f:
        return json.load(f)


class RecsysDataset:
    """A built dataset: metadata, id maps, item counts and side info, and per-split data.

    Attributes: ``path``, ``num_users``, ``num_items`` (ids ``1..num_items``, 0 = padding),
    ``has_timestamps``, ``item_map`` / ``user_map`` (:class:`IdMap`), ``item_counts`` (``[N + 1]``
    int64, training part only: use it for logQ and most-popular), ``item_counts_all`` (whole
    sequences), ``side_info`` (list by dense id or None), ``report`` (the build report), and
    ``lengths`` / ``record_users`` (per record of the ``users`` split), ``in_memory``, and ``events``
    (``events.json`` of an event dataset: vocabularies, item table, record fields; else None).
    """

    def __init__(self, folder: str | os.PathLike, *, in_memory: bool | None = None):
        path = find_dataset_dir(folder)
        if not os.path.isfile(os.path.join(path, "build_report.json")):
            raise FileNotFoundError(
                f"'{path}' is an incomplete build (no build_report.json): rebuild it with --overwrite")
        self.path = path
        self.metadata = data_lib.dataset_metadata(path)
        self.report = _load_json(path, "build_report.json")
        maps = _load_json(path, "id_maps.json")
        self.item_map = IdMap.from_json(maps["items"])
        self.user_map = IdMap.from_json(maps["users"])
        counts = _load_json(path, "item_counts.json")
        self.item_counts = np.asarray(counts["train"], dtype=np.int64)
        self.item_counts_all = np.asarray(counts["all"], dtype=np.int64)
        index = _load_json(path, "index.json")
        self.record_users = np.asarray(index["user"], dtype=np.int64)
        self.lengths = np.asarray(index["length"], dtype=np.int64)
        items_file = os.path.join(path, "items.json")
        self.side_info: list[dict | None] | None = (
            _load_json(path, "items.json") if os.path.isfile(items_file) else None)
        events_file = os.path.join(path, "events.json")
        # event datasets (recsys_jax.data.event_builder): vocabularies, item table and record fields
        self.events: dict | None = _load_json(path, "events.json") if os.path.isfile(events_file) else None
        self.num_items = len(self.item_map)
        self.num_users = len(self.user_map)
        self.has_timestamps = bool(self.metadata.get("has_timestamps", True))
        # the sequences are small: keep them in memory unless there are very many users
        self.in_memory = self.num_users <= IN_MEMORY_MAX_USERS if in_memory is None else bool(in_memory)
        self._record_of_user = np.empty(self.num_users, np.int64)
        self._record_of_user[self.record_users] = np.arange(len(self.record_users))

    def __repr__(self) -> str:
        return f"RecsysDataset('{self.path}', users={self.num_users}, items={self.num_items})"

    @functools.cached_property
    def source(self):
        """Random-access source over every user's full sequence (records in TFDS order); a list
        in memory when ``in_memory`` (read once, in chunks: far faster than per-record reads)."""
        disk = data_lib.open_split(self.path, SPLIT)
        if not self.in_memory:
            return disk
        records = []
        for start in range(0, len(disk), 4096):
            records.extend(disk.__getitems__(list(range(start, min(start + 4096, len(disk))))))
        return records

    def sequence(self, user: int) -> dict[str, Any]:
        """The stored record of dense user id ``user``."""
        if not 0 <= user < self.num_users:
            raise IndexError(f"user {user} out of range [0, {self.num_users})")
        return self.source[int(self._record_of_user[user])]

    def split_source(self, split: str, *, pad_to_multiple: int = 1) -> RecordSubset:
        """The raw records of the users that have an example in ``split`` (see splits.in_split);
        padded with empty records to a multiple of ``pad_to_multiple``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return RecordSubset(self.source, split_indices(self.lengths, split, pad_to_multiple=pad_to_multiple))

    def train_iterator(self, *, batch_size: int, max_len: int, seed: int = 0, random_windows: bool = True,
                       padding: str = "left", num_epochs: int | None = None, shard_index: int | None = None,
                       shard_count: int | None = None, worker_count: int = 0, length_grouping: int = 0,
                       length_bucket: int = 0, pack_rows: int = 0, example_fn=None, **example_kw):
        """Shuffled, repeating, checkpointable Grain iterator of autoregressive training batches
        (:func:`splits.train_example` fields, ``[batch_size, max_len]``); ``random_windows`` takes a
        random window of long sequences, else the most recent one. ``example_fn``: another example
        function with ``train_example``'s signature (e.g. the per-label event examples of
        :mod:`recsys_jax.data.event_examples`), called with ``example_kw`` too.

        ``length_grouping`` > 0: users of similar training length share a batch (sorted within windows of
        that many global batches of the shuffled order, the batch order then shuffled), and each batch is
        cut to ``[batch_size, L]`` with ``L`` its longest row rounded up to a multiple of ``length_bucket``
        (0: no cut), at most ``max_len``; see :class:`core_jax.data.LengthGrouping`. The order is global
        (every process the same), so all processes cut a step to the same ``L``.

        ``pack_rows`` > 0: each batch's users share rows of ``max_len`` (:mod:`core_jax.packing`: ``[R, max_len]``
        fields plus ``segment_ids`` and ``positions``, ``R`` a multiple of ``pack_rows``; ``user`` stays
        ``[batch_size]``), over the same global order (``length_grouping`` 0: plain shuffled batches)."""
        source = self.split_source("train")
        if len(source) == 0:
            raise ValueError(f"no training examples in {self.path}: training needs users with 2 or at least 4 "
                             "items (see recsys_jax.data.splits)")
        kw = dict(max_len=max_len, padding=padding, **example_kw)
        fn = example_fn or train_example
        if random_windows:
            fns = dict(random_transforms=[functools.partial(_random_example, fn=fn, **kw)])
        else:
            fns = dict(transforms=[functools.partial(fn, **kw)])
        grouping = None
        if length_grouping or pack_rows:
            # a time split (the event examples' ``cutoff``) may train on every event of a record
            bounds = self.train_lengths(max_len, time_split=example_kw.get("cutoff") is not None)
            grouping = data_lib.LengthGrouping(bounds[source.indices],
                                               window=max(1, length_grouping), bucket=length_bucket, max_len=max_len,
                                               padding=padding, pack_rows=pack_rows)
        return data_lib.make_iterator(source, batch_size=batch_size, seed=seed, shuffle=True,
                                      num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count,
                                      worker_count=worker_count, length_grouping=grouping, **fns)

    def train_lengths(self, max_len: int, *, time_split: bool = False) -> np.ndarray:
        """Per record, the number of input/target pairs of its training example (at most ``max_len``), from
        the stored lengths (``index.json``: no record is read); with ``time_split`` an upper bound (the events
        before the cutoff may be all of them)."""
        n = np.asarray(self.lengths)
        return np.clip((n if time_split else train_length(n)) - 1, 0, max_len)

    def eval_iterator(self, split: str, *, batch_size: int, max_len: int, padding: str = "left",
                      shard_index: int | None = None, shard_count: int | None = None):
        """One pass over ``split`` ("validation" / "test") in whole batches of :func:`splits.eval_example`
        fields; the set is padded with ``valid=False`` examples so every process gets the same
        number of full batches (weight metrics by ``valid``)."""
        if split not in ("validation", "test"):
            raise ValueError(f"eval_iterator split must be 'validation' or 'test', got {split!r}")
        count = jax.process_count() if shard_count is None else shard_count
        source = self.split_source(split, pad_to_multiple=batch_size * count)
        fn = functools.partial(eval_example, split=split, max_len=max_len, padding=padding)
        return data_lib.make_iterator(source, batch_size=batch_size, shuffle=False, num_epochs=1, transforms=[fn],
                                      shard_index=shard_index, shard_count=shard_count, drop_remainder=True)

    def item_texts(self, fields: list[str] | tuple[str, ...] | None = None) -> list[str]:
        """One text per dense item id (``[0]`` is ""), for text embeddings of items.

        ``fields`` None: the ``text`` field, else the title and the genres / tags / department / category /
        brand / type / description fields present, else the original id. ``fields`` given: those side-info
        fields. Joined with ". " (lists with ", "; missing and repeated ones skipped; the original id when none
        is set)."""
        auto = fields is None
        keys = tuple(fields) if fields is not None else ("title", *TEXT_FIELDS)
        out = [""]
        for i in range(1, self.num_items + 1):
            info = (self.side_info[i] if self.side_info else None) or {}
            if auto and info.get("text"):
                out.append(str(info["text"]))
                continue
            parts = []
            for key in keys:
                v = info.get(key)
                text = ", ".join(map(str, v)) if isinstance(v, list) else "" if v is None else str(v)
                if text and text not in parts:
                    parts.append(text)
            out.append(". ".join(parts) if parts else f"item {self.item_map.to_original(i)}")
        return out


def _random_example(example, rng, *, fn, **kw):
    """``fn(example, rng=rng, **kw)``: the signature Grain's ``random_map`` expects."""
    return fn(example, rng=rng, **kw)


def load_dataset(folder: str | os.PathLike, *, in_memory: bool | None = None) -> RecsysDataset:
    """Open a dataset folder written by ``recsys-jax data build`` (or its ``--out`` folder).

    ``in_memory``: read all sequences into memory on first use (default: when there are at most
    ``IN_MEMORY_MAX_USERS`` users), else read records from the ArrayRecord file on demand.
    """
    return RecsysDataset(folder, in_memory=in_memory)
