"""Build a sequence dataset folder (ArrayRecord through TFDS) from an interaction log.

The folder (``<out_dir>/<name>/1.0.0``) holds one record per user in the TFDS split ``users``:
``user`` (dense id), ``items`` (int32 ``[n]``, oldest first) and ``timestamps`` (int64 ``[n]``,
zeros when the source has none), plus:

* ``id_maps.json``: ``{"items" | "users": {"to_dense": {original: dense}, "to_original": [...]}}``
  (``items.to_original[0]`` is null: dense id 0 is padding);
* ``item_counts.json``: ``{"train": [N + 1], "all": [N + 1]}`` occurrences of each item in the
  training part of the splits (for logQ correction, most-popular baselines) and in whole sequences;
* ``items.json``: side info by dense id (``[0]`` and items without side info are null), when given;
* ``index.json``: ``{"user": [...], "length": [...]}`` per record (TFDS shuffles records on write);
* ``build_report.json``: what was read, filtered, truncated and kept (also printed).

Validation and test are derived from the stored sequences (see :mod:`recsys_jax.data.splits`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from core_jax import data as data_lib
from recsys_jax.data import formats
from recsys_jax.data.formats import Interaction
from recsys_jax.data.sequences import Sequences, build_sequences, dense_side_info
from recsys_jax.data.splits import split_counts
from recsys_jax.data.synthetic import SyntheticConfig, generate

SPLIT = "users"
VERSION = "1.0.0"
SOURCE_FORMATS = formats.FORMATS + ("synthetic",)
FILES = ("id_maps.json", "item_counts.json", "items.json", "index.json", "build_report.json")


@dataclasses.dataclass
class SourceSpec:
    """Where the interactions come from.

    ``items``: a side-info file; ``None`` looks for the usual one beside the input (``movies.dat``,
    ``<stem>.item``), ``""`` disables side info. ``columns``: the csv/parquet column mapping, e.g.
    ``"user=uid,item=iid,time=ts"``. ``synthetic``: the generator config for ``format="synthetic"``.
    """

    format: str = "synthetic"
    input: str | None = None
    items: str | None = None
    columns: str | dict | None = None
    skip_bad_lines: bool = False
    synthetic: SyntheticConfig | None = None

    def validate(self) -> None:
        if self.format not in SOURCE_FORMATS:
            raise ValueError(f"unknown format {self.format!r}; expected one of {list(SOURCE_FORMATS)}")
        if self.format == "synthetic":
            if self.input:
                raise ValueError("format 'synthetic' generates its data: give no input file")
        elif not self.input:
            raise ValueError(f"format {self.format!r} needs an input file")
        if self.columns is not None and self.format not in ("csv", "parquet"):
            raise ValueError(f"a column mapping applies to the csv and parquet formats, not {self.format!r}")


def _read(spec: SourceSpec, progress: bool) -> tuple[Iterable[Interaction], dict | None, formats.ReadStats, str | None]:
    """The interactions, the side info, the reader's counters and the side-info path used."""
    stats = formats.ReadStats()
    if spec.format == "synthetic":
        data = generate(spec.synthetic or SyntheticConfig())
        stats.lines = len(data.interactions)
        return data.interactions, data.items, stats, None
    inter = formats.read_interactions(spec.format, spec.input, columns=spec.columns,
                                      skip_bad_lines=spec.skip_bad_lines, stats=stats)
    inter = tqdm(inter, desc=f"reading {os.path.basename(spec.input)}", unit=" lines", mininterval=2.0,
                 disable=not progress, leave=False)
    items_path = formats.default_items_path(spec.format, spec.input) if spec.items is None else spec.items
    side = formats.read_items(spec.format, items_path, columns=spec.columns) if items_path else None
    return inter, side, stats, items_path or None


def dataset_dir(out_dir: str | os.PathLike, name: str = "sequences") -> str:
    """The folder :func:`build` writes for ``out_dir`` and ``name``."""
    return os.path.join(os.fspath(out_dir), name, VERSION)


def build(
    spec: SourceSpec,
    out_dir: str | os.PathLike,
    *,
    max_seq_len: int | None = 200,
    min_rating: float | None = None,
    min_user_interactions: int = 0,
    name: str = "sequences",
    overwrite: bool = False,
    progress: bool = True,
    verbose: bool = True,
) -> str:
    """Read ``spec``, build per-user sequences and write the dataset folder; returns its path."""
    spec.validate()
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"dataset name {name!r}: expected lower_snake_case (letters, digits, '_')")
    path = dataset_dir(out_dir, name)
    if os.path.exists(path):
        if not overwrite:
            raise FileExistsError(f"dataset folder '{path}' already exists: choose another --out or pass --overwrite")
        shutil.rmtree(os.path.join(os.fspath(out_dir), name))

    interactions, side, read_stats, items_path = _read(spec, progress)
    seqs = build_sequences(interactions, min_rating=min_rating, min_user_interactions=min_user_interactions,
                           max_seq_len=max_seq_len)
    if seqs.num_users == 0:
        raise ValueError(f"no users left to write (read {read_stats.lines} lines; filters: min_rating={min_rating}, "
                         f"min_user_interactions={min_user_interactions})")
    source = {"format": spec.format, "input": spec.input, "items": items_path, "columns": spec.columns,
              "synthetic": (dataclasses.asdict(spec.synthetic or SyntheticConfig())
                            if spec.format == "synthetic" else None)}
    return write_dataset(seqs, side, out_dir, name=name, max_seq_len=max_seq_len, verbose=verbose,
                         extra_report={"source": source, "lines_read": read_stats.lines,
                                       "bad_lines_skipped": read_stats.bad_lines,
                                       "first_bad_line": read_stats.first_bad,
                                       "filters": {"min_rating": min_rating, "max_seq_len": max_seq_len,
                                                   "min_user_interactions": min_user_interactions}})


def write_dataset(seqs: Sequences, side_info: dict[str, dict] | None, out_dir, *, name: str = "sequences",
                  max_seq_len: int | None = None, verbose: bool = True, extra_report: dict | None = None,
                  fields: dict[str, list[np.ndarray]] | None = None, extra_json: dict[str, Any] | None = None,
                  extra_arrays: dict[str, dict[str, np.ndarray]] | None = None) -> str:
    """Write ``seqs`` (and side info keyed by original item id) as a dataset folder; returns its path.

    ``fields``: more per-user arrays stored in each record beside ``items`` (one array per user,
    aligned with ``seqs.items[u]``; e.g. the event fields of :mod:`recsys_jax.data.event_builder`);
    ``extra_json`` / ``extra_arrays``: more files (``name -> object`` as JSON, ``name -> arrays`` as
    ``.npz``), written before the build report."""
    fields = fields or {}
    for key, per_user in fields.items():
        if key in ("user", "items", "timestamps") or len(per_user) != seqs.num_users:
            raise ValueError(f"field {key!r}: expected a new name and one array per user ({seqs.num_users})")
    features = {
        "user": tfds.features.Scalar(dtype=np.int64),
        "items": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "timestamps": tfds.features.Tensor(shape=(None,), dtype=np.int64),
        **{key: tfds.features.Tensor(shape=(None,), dtype=per_user[0].dtype.type if per_user else np.float32)
           for key, per_user in fields.items()},
    }

    def users():
        for u, (items, ts) in enumerate(zip(seqs.items, seqs.timestamps)):
            yield u, {"user": u, "items": items, "timestamps": ts, **{k: v[u] for k, v in fields.items()}}

    lengths = np.array([len(s) for s in seqs.items], dtype=np.int64)
    metadata = {"num_users": seqs.num_users, "num_items": seqs.num_items, "has_timestamps": seqs.has_timestamps,
                "max_seq_len": max_seq_len, "split": SPLIT, "max_length": int(lengths.max(initial=0))}
    path = data_lib.build_dataset(name, out_dir, features, {SPLIT: users}, version=VERSION, metadata=metadata,
                                  description="per-user item sequences (recsys_jax.data.builder)")

    # record the user and length of every record.
    src = data_lib.open_split(path, SPLIT)
    rec_user = np.empty(len(src), np.int64)
    for start in range(0, len(src), 4096):
        for j, ex in enumerate(src.__getitems__(list(range(start, min(start + 4096, len(src)))))):
            rec_user[start + j] = int(ex["user"])
    if len(src) != seqs.num_users or sorted(rec_user.tolist()) != list(range(seqs.num_users)):
        raise RuntimeError(f"dataset '{path}' read back {len(src)} records, expected one per user ({seqs.num_users})")

    side_dense, side_stats = dense_side_info(seqs.item_map, side_info)
    report = {
        "dataset": path,
        **(extra_report or {}),
        **{k: v for k, v in seqs.stats.items() if k not in ("users", "items", "interactions")},
        "users": seqs.num_users,
        "items": seqs.num_items,
        "interactions": seqs.stats["interactions"],
        "has_timestamps": seqs.has_timestamps,
        "sequence_length": {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 2),
                            "max": int(lengths.max())},
        "split_users": split_counts(lengths),
        **side_stats,
    }
    _dump(path, "id_maps.json", {"items": seqs.item_map.to_json(), "users": seqs.user_map.to_json()})
    _dump(path, "item_counts.json", {"train": seqs.item_counts(last=2).tolist(), "all": seqs.item_counts().tolist()})
    if side_dense is not None:
        _dump(path, "items.json", side_dense)
    _dump(path, "index.json", {"user": rec_user.tolist(), "length": lengths[rec_user].tolist()})
    for file, obj in (extra_json or {}).items():
        _dump(path, file, obj)
    for file, arrays in (extra_arrays or {}).items():
        np.savez_compressed(os.path.join(path, file), **arrays)
    _dump(path, "build_report.json", report)  # written last: its presence marks a complete build
    if verbose:
        print(format_report(report))
    return path


def _dump(folder: str, name: str, obj: Any) -> None:
    tmp = os.path.join(folder, name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
    os.replace(tmp, os.path.join(folder, name))


def format_report(report: dict) -> str:
    """The build report as ``key: value`` lines."""
    lines = ["build report:"]
    for key, value in report.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
        if value is None:
            continue
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)
