"""Preference pairs -> an ArrayRecord dataset for Diffusion-DPO (``canvas-jax data build --kind preferences``).

The source is a JSON-lines file, one pair per line::

    {"prompt": "a small red circle at the top left", "chosen": "images/0_1.png", "rejected": "images/0_3.png"}

with image paths relative to the file's folder (or absolute). Optional fields: ``chosen_score`` /
``rejected_score`` (numbers), ``chosen_seed`` / ``rejected_seed`` (integers), ``split`` (default ``train``) and
anything else (kept as JSON text in ``info``, e.g. the sampler settings of ``canvas-jax rl collect``, which
writes such a file and builds it with :func:`build_preferences`). A line with bad JSON, a missing field, or a
missing or unreadable image is skipped and counted in the build report (``build_report.json``).

Records: ``chosen``, ``rejected`` (uint8 [H, W, 3]), ``caption`` (the prompt), ``chosen_score``,
``rejected_score`` (float32, NaN when absent), ``chosen_seed``, ``rejected_seed`` (int64, -1 when absent),
``info`` (JSON text).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from canvas_jax.data.ingest import BuildReport, ImageReadError, _write, dataset_name, json_lines, load_image
from canvas_jax.errors import InputError

REQUIRED = ("prompt", "chosen", "rejected")
KNOWN = (*REQUIRED, "chosen_score", "rejected_score", "chosen_seed", "rejected_seed", "split")


def _number(record: dict, key: str, kind, missing):
    value = record.get(key, missing)
    if value is missing or value is None:
        return missing
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ValueError(f"{key} = {value!r}: expected {'an integer' if kind is int else 'a number'}")
    return kind(value)


def read_pairs(path: str | os.PathLike) -> list[tuple[int, dict | None, str]]:
    """The file's lines as (line number, pair record or None, problem or "")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference pairs file {path} does not exist")
    rows = []
    for lineno, record, problem in json_lines(path):
        if problem:
            rows.append((lineno, None, problem))
            continue
        if not isinstance(record, dict):
            rows.append((lineno, None, "expected a JSON object"))
            continue
        bad = [k for k in REQUIRED if not isinstance(record.get(k), str) or not record[k]]
        if bad:
            rows.append((lineno, None, f"no {', '.join(repr(k) for k in bad)} text (expected {list(REQUIRED)})"))
            continue
        try:
            pair = {"prompt": record["prompt"], "chosen": record["chosen"], "rejected": record["rejected"],
                    "split": str(record.get("split") or "train"),
                    "chosen_score": _number(record, "chosen_score", float, math.nan),
                    "rejected_score": _number(record, "rejected_score", float, math.nan),
                    "chosen_seed": _number(record, "chosen_seed", int, -1),
                    "rejected_seed": _number(record, "rejected_seed", int, -1),
                    "info": json.dumps({k: v for k, v in record.items() if k not in KNOWN}, sort_keys=True)}
        except ValueError as err:
            rows.append((lineno, None, str(err)))
            continue
        rows.append((lineno, pair, ""))
    return rows


def build_preferences(src: str | os.PathLike, data_dir: str | os.PathLike, *, name: str | None = None,
                      size: int | None = None, overwrite: bool = False, verbose: bool = True) -> tuple[str, BuildReport]:
    """Build the dataset of the pairs in ``src`` under ``data_dir`` (see the module docstring); returns
    (dataset folder, report). ``size`` resizes and centre-crops both images of every pair."""
    import tensorflow_datasets as tfds

    if size is not None and size < 1:
        raise InputError(f"size={size}: expected a positive number of pixels (or None to keep sizes)")
    src = Path(src)
    rows = read_pairs(src)
    if not rows:
        raise InputError(f"{src} holds no preference pairs; expected JSON lines with {list(REQUIRED)}")
    report = BuildReport(kind="preferences")
    splits = sorted({pair["split"] for _, pair, _ in rows if pair is not None}) or ["train"]

    def gen(split: str):
        def examples():
            for lineno, pair, problem in rows:
                if pair is not None and pair["split"] != split:
                    continue
                if pair is None:
                    if split == splits[0]:  # bad lines are counted once, in the first split
                        report._count(split, "found")
                        report.skip(split, f"{src.name}:{lineno}", problem)
                    continue
                report._count(split, "found")
                try:
                    images = {k: load_image(src.parent / pair[k], size) for k in ("chosen", "rejected")}
                except ImageReadError as err:
                    report.skip(split, f"{src.name}:{lineno}", str(err))
                    continue
                if images["chosen"].shape != images["rejected"].shape:
                    report.skip(split, f"{src.name}:{lineno}", f"image sizes differ: {images['chosen'].shape} vs "
                                f"{images['rejected'].shape} (pass a size to resize both)")
                    continue
                report._count(split, "written")
                yield lineno, {**images, "caption": pair["prompt"], "info": pair["info"],
                               **{k: pair[k] for k in ("chosen_score", "rejected_score", "chosen_seed",
                                                       "rejected_seed")}}
        return examples

    shape = (size, size, 3) if size else (None, None, 3)
    image = tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding="zlib")
    features = {"chosen": image, "rejected": image, "caption": tfds.features.Text(), "info": tfds.features.Text(),
                "chosen_score": tfds.features.Scalar(dtype=np.float32),
                "rejected_score": tfds.features.Scalar(dtype=np.float32),
                "chosen_seed": tfds.features.Scalar(dtype=np.int64),
                "rejected_seed": tfds.features.Scalar(dtype=np.int64)}
    name = name or dataset_name(f"{src.parent.name}_preferences")
    metadata = {"kind": "preferences", "size": size, "source": str(src)}
    path = _write(name, data_dir, features, {s: gen(s) for s in splits}, report, metadata, overwrite, verbose)
    return path, report


class _PairTransform:
    """A preference record -> ``chosen`` / ``rejected`` float32 [H, W, 3] in [-1, 1] (both resized and cropped
    alike to ``resolution``, flipped together with ``random_flip``, left/right swapped in the caption) and the
    caption's ``input_ids`` / ``attention_mask``."""

    def __init__(self, tokenizer, resolution: int, max_length: int | None, random_flip: bool):
        import copy

        self.tokenizer = copy.deepcopy(tokenizer)  # Tokenizer switches padding per call: one per pipeline
        self.resolution, self.max_length, self.random_flip = resolution, max_length, random_flip

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        from canvas_jax.data.loader import _text, decode_image, resize_crop, swap_left_right

        caption = _text(record["caption"])
        images = [resize_crop(decode_image(record[k]), self.resolution, 1.0, None) for k in ("chosen", "rejected")]
        if self.random_flip and rng.random() < 0.5:
            images, caption = [im[:, ::-1] for im in images], swap_left_right(caption)
        tokens = self.tokenizer([caption], max_length=self.max_length)
        return {"chosen": images[0].astype(np.float32) / 127.5 - 1.0,
                "rejected": images[1].astype(np.float32) / 127.5 - 1.0,
                "input_ids": tokens["input_ids"][0], "attention_mask": tokens["attention_mask"][0]}


def make_preference_iterator(folder: str | os.PathLike, tokenizer, *, resolution: int, batch_size: int,
                             split: str = "train", max_length: int | None = None, random_flip: bool = False,
                             seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                             shard_index: int | None = None, shard_count: int | None = None):
    """A checkpointable Grain iterator of preference batches (see :class:`_PairTransform`) of this process's shard."""
    from canvas_jax.data.loader import open_split
    from core_jax import data as data_lib

    return data_lib.make_iterator(open_split(folder, split), batch_size=batch_size, seed=seed, shuffle=shuffle,
                                  num_epochs=num_epochs,
                                  random_transforms=[_PairTransform(tokenizer, resolution, max_length, random_flip)],
                                  shard_index=shard_index, shard_count=shard_count)
