"""The Grain input pipeline for text-to-image training: records in, the batch contract out.

Per process and per batch (numpy):

* ``image``: float32 [B, R, R, 3] in [-1, 1]
* ``input_ids``, ``attention_mask``: int32 [B, T] from the given :class:`~core_jax.text.tokenizer.Tokenizer`
  (``tokenizer=None``: no token fields, e.g. for VAE training; ``keep_caption`` adds the ``caption`` strings); caption dropout replaces the
  caption with "" before tokenizing
* ``mask``: float32 [B, R, R, 1], 1 = repaint (only when ``mask_kinds`` is set)
* ``label`` / ``caption_index`` / ``heldout``: int32 [B] when the records have them

Records come from a dataset folder written by :mod:`canvas_jax.data.ingest` or
:func:`canvas_jax.data.shapes.build_shapes`, or from an in-memory source (:class:`ShapesSource`, any
``len`` / ``[i]`` object of dicts with ``image`` uint8 [H, W, 3] or encoded bytes, and ``caption``).
Everything random (crop, flip, dropout, masks) runs as a Grain ``random_map`` seeded per element, so a
restored iterator state continues with exactly the same batches.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from canvas_jax.data import masks as masks_lib
from canvas_jax.data.shapes import ShapesConfig, ShapesSource
from canvas_jax.errors import InputError

INT_FIELDS = ("label", "caption_index", "heldout")


@dataclasses.dataclass(frozen=True)
class ImagePipelineConfig:
    """Augmentation, tokenization and masking options of :func:`make_image_iterator`."""

    resolution: int = 32
    crop_scale: float = 1.0  # resize the shorter side to resolution * crop_scale, then crop resolution
    random_crop: bool = False  # random crop position (else the centre)
    random_flip: bool = False  # horizontal flip with probability 1/2
    swap_left_right: bool = False  # on a flip, swap "left" and "right" in the caption (Shapes positions)
    caption_dropout: float = 0.0  # probability of replacing the caption by "" (classifier-free guidance)
    max_length: int | None = None  # token length (default: the tokenizer's model_max_length)
    mask_kinds: tuple[str, ...] = ()  # inpainting masks drawn from these kinds; empty: no mask
    keep_caption: bool = False  # also return the (post-dropout) caption strings

    def __post_init__(self):
        if self.resolution < 1:
            raise InputError(f"resolution={self.resolution}: expected a positive number of pixels")
        if self.crop_scale < 1.0:
            raise InputError(f"crop_scale={self.crop_scale}: expected >= 1 (the crop is taken from a larger resize)")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise InputError(f"caption_dropout={self.caption_dropout}: expected a probability in [0, 1]")
        bad = [k for k in self.mask_kinds if k not in masks_lib.MASK_KINDS]
        if bad:
            raise InputError(f"mask_kinds {bad}: expected kinds from {', '.join(masks_lib.MASK_KINDS)}")
        object.__setattr__(self, "mask_kinds", tuple(self.mask_kinds))


def resolve_dataset_dir(path: str | os.PathLike) -> Path:
    """A dataset folder (with ``dataset_info.json``), also accepting its parent holding one version folder."""
    path = Path(path)
    if (path / "dataset_info.json").is_file():
        return path
    versions = sorted(p for p in path.glob("*") if (p / "dataset_info.json").is_file()) if path.is_dir() else []
    if len(versions) == 1:
        return versions[0]
    if not path.exists():
        raise FileNotFoundError(f"dataset folder {path} does not exist; build one with `canvas-jax data build`")
    raise FileNotFoundError(f"{path}: expected a dataset folder with dataset_info.json "
                            f"(found {len(versions)} version folders)")


def open_split(path: str | os.PathLike, split: str):
    """One split of a dataset folder (see :func:`resolve_dataset_dir`) as a random-access source."""
    from core_jax import data as data_lib

    path = resolve_dataset_dir(path)
    splits = data_lib.split_names(path)
    if split not in splits:
        raise InputError(f"dataset {path} has no split {split!r}; it has {', '.join(splits) or 'none'}")
    return data_lib.open_split(path, split)


def open_source(source, split: str = "train", *, shapes: ShapesConfig | None = None, num_examples: int = 10_000,
                seed: int = 0):
    """A random-access source: ``"shapes"`` (in-memory Shapes), a dataset folder, or a ``len``/``[i]`` object."""
    if isinstance(source, str) and source == "shapes":
        return ShapesSource(shapes or ShapesConfig(), num_examples=num_examples, seed=seed, split=split)
    if isinstance(source, (str, os.PathLike)):
        return open_split(source, split)
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        return source
    raise InputError(f"source: expected 'shapes', a dataset folder or a random-access source, "
                     f"got {type(source).__name__}")


def decode_image(value) -> np.ndarray:
    """uint8 [H, W, 3] from an array (HW, HWC with 1/3/4 channels) or encoded image bytes."""
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        with Image.open(io.BytesIO(bytes(value))) as img:
            return np.asarray(img.convert("RGB"), np.uint8)
    x = np.asarray(value)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[-1] not in (1, 3, 4):
        raise InputError(f"record image: expected uint8 [H, W, 3] or encoded bytes, got shape {x.shape}")
    if x.dtype != np.uint8:
        raise InputError(f"record image: expected dtype uint8, got {x.dtype}")
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]


def _text(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def images_and_captions(records) -> tuple[np.ndarray, list[str]]:
    """uint8 images [N, H, W, 3] and captions ("" where a record has none) of dataset records."""
    return np.stack([decode_image(r["image"]) for r in records]), [_text(r.get("caption", "")) for r in records]


def resize_crop(image: np.ndarray, size: int, scale: float, rng: np.random.Generator | None) -> np.ndarray:
    """Resize (shorter side to ``size * scale``) and crop ``size`` x ``size`` (at random with ``rng``)."""
    h, w = image.shape[:2]
    target = max(size, round(size * scale))
    if min(h, w) != target:
        f = target / min(h, w)
        nw, nh = max(size, round(w * f)), max(size, round(h * f))
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BICUBIC), np.uint8)
        h, w = nh, nw
    if rng is None:
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return image[top:top + size, left:left + size]


_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def swap_left_right(caption: str) -> str:
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", caption)


class _Decode:
    """Deterministic part: record -> {image uint8, caption str, int fields}."""

    def __call__(self, record: dict) -> dict:
        if "image" not in record:
            raise InputError(f"record has no 'image' field (fields: {sorted(record)})")
        out = {"image": decode_image(record["image"]), "caption": _text(record.get("caption", ""))}
        for key in INT_FIELDS:
            if key in record:
                out[key] = np.int32(record[key])
        return out


class _Augment:
    """Random part: crop, flip, caption dropout, mask, tokenize, scale to [-1, 1]."""

    def __init__(self, cfg: ImagePipelineConfig, tokenizer):
        self.cfg = cfg
        # a private copy: Tokenizer switches its backend's padding per call, so it must not be shared
        # between this pipeline's thread and the caller's
        self.tokenizer = copy.deepcopy(tokenizer) if tokenizer is not None else None
        if tokenizer is not None and (cfg.max_length or tokenizer.model_max_length) is None:
            raise InputError("the tokenizer has no model_max_length: set max_length in the pipeline config")

    def __call__(self, ex: dict, rng: np.random.Generator) -> dict:
        cfg = self.cfg
        image = resize_crop(ex["image"], cfg.resolution, cfg.crop_scale, rng if cfg.random_crop else None)
        caption = ex["caption"]
        if cfg.random_flip and rng.random() < 0.5:
            image = image[:, ::-1]
            if cfg.swap_left_right:
                caption = swap_left_right(caption)
        if cfg.caption_dropout > 0 and rng.random() < cfg.caption_dropout:
            caption = ""
        out = {"image": image.astype(np.float32) / 127.5 - 1.0}
        if cfg.mask_kinds:
            out["mask"] = masks_lib.random_mask(rng, cfg.resolution, cfg.resolution, cfg.mask_kinds)
        if self.tokenizer is not None:
            tokens = self.tokenizer([caption], max_length=cfg.max_length)
            out["input_ids"], out["attention_mask"] = tokens["input_ids"][0], tokens["attention_mask"][0]
        if cfg.keep_caption:
            out["caption"] = caption
        for key in INT_FIELDS:
            if key in ex:
                out[key] = ex[key]
        return out


def make_image_iterator(source, tokenizer, cfg: ImagePipelineConfig = ImagePipelineConfig(), *, batch_size: int,
                        split: str = "train", seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                        shard_index: int | None = None, shard_count: int | None = None, drop_remainder: bool = True,
                        worker_count: int = 0):
    """A checkpointable Grain iterator of batches in the contract above (this process's shard).

    ``source``: as for :func:`open_source` (a dataset folder, ``"shapes"`` (default Shapes, ``split``), or a
    random-access source such as ``ShapesSource(cfg, ...)``).
    """
    from core_jax import data as data_lib

    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}: expected >= 1")
    source = open_source(source, split)
    return data_lib.make_iterator(source, batch_size=batch_size, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                                  transforms=[_Decode()], random_transforms=[_Augment(cfg, tokenizer)],
                                  shard_index=shard_index, shard_count=shard_count, drop_remainder=drop_remainder,
                                  worker_count=worker_count)


def batch_from_captions(captions: Sequence[str], tokenizer, max_length: int | None = None) -> dict[str, np.ndarray]:
    """Tokenized captions in the batch contract's text fields (e.g. for evaluation prompts)."""
    return tokenizer(list(captions), max_length=max_length)
