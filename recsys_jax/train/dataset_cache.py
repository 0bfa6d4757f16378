"""The dataset a run config names: ``data.dir``, or ``data.build`` built once into ``data.cache_dir``.

A build is keyed by a hash of its spec (format, the input files' *content*: size and sampled bytes, filters,
synthetic parameters), so a changed spec or input file builds a new dataset and an unchanged one reuses
the cached folder, under the same name on every host wherever the file sits and whatever its mtime.
Process 0 builds (into a temporary folder, renamed when complete) while every process waits at one
barrier; a process that still does not see the dataset after it (a host without a shared file system)
builds its own copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import jax
from jax.experimental import multihost_utils

from recsys_jax.data.builder import SourceSpec, build, dataset_dir
from recsys_jax.data.event_builder import RATING_BEHAVIOURS, EventSourceSpec, build_events
from recsys_jax.data.loader import find_dataset_dir

NAME = "sequences"
SAMPLES, SAMPLE_BYTES = 64, 1 << 16  # the content key reads 64 evenly spread 64 KiB blocks (4 MiB at most)


def content_key(path: str) -> str:
    """A hash of a file's size and content: the whole file up to 4 MiB, else 64 evenly spread 64 KiB blocks
    (first and last included). Independent of the file's path and modification time."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= SAMPLES * SAMPLE_BYTES:
            h.update(f.read())
        else:
            for i in range(SAMPLES):
                f.seek(i * (size - SAMPLE_BYTES) // (SAMPLES - 1))
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def is_event_build(b) -> bool:
    """Whether ``data.build`` makes an event dataset (marketplace, completejourney, or ``events: true``)."""
    return b.format in ("marketplace", "completejourney") or bool(b.events)


def _spec_key(b) -> str:
    def file_sig(path):
        return content_key(path) if path and os.path.isfile(path) else path

    spec = {"format": b.format, "input": file_sig(b.input), "items": file_sig(b.items),
            "columns": b.columns, "skip_bad_lines": b.skip_bad_lines, "max_seq_len": b.max_seq_len,
            "min_rating": b.min_rating, "min_user_interactions": b.min_user_interactions,
            "synthetic": dataclasses.asdict(b.synthetic) if b.format == "synthetic" else None}
    if b.format == "marketplace":  # event datasets only (the keys of the other formats stay as they were)
        spec.update(marketplace=dataclasses.asdict(b.marketplace), attribution=dataclasses.asdict(b.attribution),
                    drop_actions=list(b.drop_actions))
    elif is_event_build(b):
        spec.update(events=True, rating_behaviours=b.rating_behaviours, attribution=dataclasses.asdict(b.attribution),
                    drop_actions=list(b.drop_actions))
    if is_event_build(b):  # event datasets with the conversions_delay label (older caches lack it: rebuilt)
        spec["label_delays"] = True
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_dataset_dir(data_cfg) -> str:
    """Where ``data_cfg.build`` is (or will be) built under ``data_cfg.cache_dir``."""
    b = data_cfg.build
    if b.input and not (os.path.isfile(b.input) or (b.format == "completejourney" and os.path.isdir(b.input))):
        raise FileNotFoundError(f"config key 'data.build.input': file '{b.input}' not found")
    stem = (b.format if b.format in ("synthetic", "marketplace", "completejourney")
            else os.path.basename(b.input).split(".")[0].lower())
    stem = "".join(c if c.isalnum() else "_" for c in stem) or "data"
    return os.path.join(data_cfg.cache_dir, f"{stem}-{_spec_key(b)}")


def resolve_dataset(data_cfg, *, verbose: bool = True) -> str:
    """The dataset folder for the ``data`` section, building it first when needed."""
    if data_cfg.dir:
        return find_dataset_dir(data_cfg.dir)
    out = cached_dataset_dir(data_cfg)
    path = dataset_dir(out, NAME)

    def built():
        return os.path.isfile(os.path.join(path, "build_report.json"))

    if jax.process_index() == 0 and not built():
        _build_atomically(data_cfg.build, out, verbose)
    if jax.process_count() > 1:  # every process, whether or not it saw the dataset before
        multihost_utils.sync_global_devices("recsys dataset built")
        if not built():  # no shared file system: this host builds its own (identical) copy
            _build_atomically(data_cfg.build, out, verbose)
    return path


def _build_atomically(b, out: str, verbose: bool) -> None:
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(f"building the dataset into {out} (once; later runs reuse it)", flush=True)
    try:
        if is_event_build(b):
            if b.min_rating is not None or b.min_user_interactions:
                raise ValueError("config keys 'data.build.min_rating' / 'min_user_interactions' apply to sequence "
                                 "datasets, not event datasets")
            spec = EventSourceSpec(format=b.format, input=b.input or None, items=b.items, columns=b.columns,
                                   skip_bad_lines=b.skip_bad_lines,
                                   rating_actions=RATING_BEHAVIOURS if b.rating_behaviours else None,
                                   marketplace=b.marketplace if b.format == "marketplace" else None)
            build_events(spec, tmp, max_seq_len=b.max_seq_len, attribution=b.attribution,
                         drop_actions=tuple(b.drop_actions), name=NAME, verbose=verbose)
        else:
            synthetic = b.synthetic if b.format == "synthetic" else None
            spec = SourceSpec(format=b.format, input=b.input, items=b.items, columns=b.columns,
                              skip_bad_lines=b.skip_bad_lines, synthetic=synthetic)
            build(spec, tmp, max_seq_len=b.max_seq_len, min_rating=b.min_rating,
                  min_user_interactions=b.min_user_interactions, name=NAME, progress=verbose, verbose=verbose)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        if os.path.isdir(out) and not os.path.isfile(os.path.join(dataset_dir(out, NAME), "build_report.json")):
            shutil.rmtree(out)  # an incomplete earlier build
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished the same build first: keep its folder
            if not os.path.isfile(os.path.join(dataset_dir(out, NAME), "build_report.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
