"""Rewards for fine-tuning toward what a judge prefers: ``reward(images, prompts) -> float32 [B]``.

``images`` are uint8 ``[B, H, W, 3]``, ``prompts`` one caption per image. Each reward has a ``name`` (its key in
the metrics); :class:`WeightedRewards` combines several with weights and reports each one separately.

* :class:`CheckerReward`: the Shapes checker with partial credit (the fraction of asked attributes drawn right,
  diluted by extra shapes), or its strict verdict (1 when :func:`canvas_jax.data.checker.check` accepts).
* :class:`ImageTextReward`: cosine similarity of image and caption embeddings from any embedder with
  ``embed_images`` / ``embed_texts`` (the ``task=clip`` model of :mod:`canvas_jax.image_text`, or CLIP towers).
* :class:`canvas_jax.rl.reward_model.LearnedReward`: a learned Bradley-Terry preference model (a
  ``task=reward_model`` run; ``learned:RUN``).
* :class:`DiversityReward`: a distribution-level reward over the samples of one prompt in the batch (as in
  Zhang et al., 2024, arXiv 2401.12244): each sample's mean feature distance to the other samples of its
  prompt, so a policy that collapses every seed onto one image loses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from canvas_jax.data.checker import MIN_FIT, check, detect
from canvas_jax.data.shapes import parse_caption
from canvas_jax.errors import InputError


class Reward(Protocol):
    name: str

    def __call__(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray: ...


def _inputs(images, prompts: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputError(f"reward: expected uint8 images [B, H, W, 3], got {images.dtype} {list(images.shape)}")
    if isinstance(prompts, str) or len(prompts) != len(images):
        raise InputError(f"reward: expected one prompt per image ({len(images)}), got "
                         f"{'a single string' if isinstance(prompts, str) else len(prompts)}")
    return images, list(prompts)


def partial_credit(image: np.ndarray, prompt: str, *, check_size: bool = True, min_fit: float = MIN_FIT) -> float:
    """Fraction of the prompt's attributes the image gets right, in [0, 1]: for each asked shape, a shape in its
    cell, of its colour, of its kind (and well formed: template fit >= ``min_fit``) and of its size each count
    one; the sum is divided by (attributes asked + attributes of every extra shape), so extra shapes dilute it.
    1.0 exactly when the strict checker accepts the image."""
    expected = parse_caption(prompt)
    fields = ("color", "shape", "size") if check_size else ("color", "shape")
    per_shape = 1 + len(fields)
    found = detect(image)
    by_cell: dict[str, list] = {}
    for d in found:
        by_cell.setdefault(d.spec.position, []).append(d)
    credit, extra = 0.0, 0
    for spec in expected:
        candidates = by_cell.pop(spec.position, [])
        if not candidates:
            continue
        d = max(candidates, key=lambda c: sum(getattr(c.spec, f) == getattr(spec, f) for f in fields))
        extra += len(candidates) - 1
        right = [getattr(d.spec, f) == getattr(spec, f) and (f != "shape" or d.iou >= min_fit) for f in fields]
        credit += 1 + sum(right)
    extra += sum(len(ds) for ds in by_cell.values())  # shapes in cells nobody asked for
    return credit / (per_shape * (len(expected) + extra))


@dataclasses.dataclass
class CheckerReward:
    """The Shapes checker: ``strict=False`` gives :func:`partial_credit`, ``strict=True`` the 0/1 verdict."""

    strict: bool = False
    check_size: bool = True
    min_fit: float = MIN_FIT

    @property
    def name(self) -> str:
        return "checker_strict" if self.strict else "checker"

    def __call__(self, images, prompts: Sequence[str]) -> np.ndarray:
        images, prompts = _inputs(images, prompts)
        if self.strict:
            return np.asarray([float(bool(check(im, p, check_size=self.check_size, min_fit=self.min_fit)))
                               for im, p in zip(images, prompts)], np.float32)
        return np.asarray([partial_credit(im, p, check_size=self.check_size, min_fit=self.min_fit)
                           for im, p in zip(images, prompts)], np.float32)


@dataclasses.dataclass
class ImageTextReward:
    """Cosine similarity of each image with its prompt under ``embedder`` (``embed_images(uint8 [B, H, W, 3])``
    and ``embed_texts(list[str])`` giving L2-normalised rows, e.g. :class:`canvas_jax.image_text.ImageTextEmbedder`)."""

    embedder: object
    name: str = "image_text"

    def __call__(self, images, prompts: Sequence[str]) -> np.ndarray:
        images, prompts = _inputs(images, prompts)
        distinct = list(dict.fromkeys(prompts))
        texts = self.embedder.embed_texts(distinct)
        rows = np.asarray([distinct.index(p) for p in prompts])
        return np.sum(self.embedder.embed_images(images) * texts[rows], axis=-1).astype(np.float32)


def pixel_features(images: np.ndarray, size: int = 8) -> np.ndarray:
    """Coarse features of uint8 images: the mean colour of each cell of a ``size`` x ``size`` grid, in [0, 1]."""
    b, h, w, c = images.shape
    if h % size or w % size:
        raise InputError(f"pixel_features: image size {h}x{w} is not a multiple of the grid size {size}")
    cells = images.astype(np.float32).reshape(b, size, h // size, size, w // size, c).mean(axis=(2, 4)) / 255.0
    return cells.reshape(b, -1)


@dataclasses.dataclass
class DiversityReward:
    """Each sample's mean Euclidean feature distance to the other samples of the same prompt in the batch
    (0 for a prompt sampled once). ``features(images) -> [B, F]``: :func:`pixel_features` by default, or an
    embedder's ``embed_images``."""

    features: Callable[[np.ndarray], np.ndarray] = pixel_features
    name: str = "diversity"

    def __call__(self, images, prompts: Sequence[str]) -> np.ndarray:
        images, prompts = _inputs(images, prompts)
        feats = np.asarray(self.features(images), np.float64)
        out = np.zeros(len(prompts), np.float32)
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        for rows in groups.values():
            if len(rows) < 2:
                continue
            f = feats[rows]
            dist = np.sqrt(np.maximum(np.sum((f[:, None] - f[None]) ** 2, axis=-1), 0.0))
            out[rows] = dist.sum(axis=1) / (len(rows) - 1)
        return out


class WeightedRewards:
    """Several rewards at once: ``total = sum(weight * reward)``; :meth:`scores` also gives each one by name."""

    def __init__(self, rewards: Sequence[tuple[Reward, float]]):
        if not rewards:
            raise InputError("WeightedRewards: expected at least one (reward, weight) pair")
        names = [r.name for r, _ in rewards]
        if len(set(names)) != len(names):
            raise InputError(f"WeightedRewards: reward names must be distinct, got {names}")
        self.rewards = [(r, float(w)) for r, w in rewards]
        self.name = "total"

    def scores(self, images, prompts: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        parts = {r.name: np.asarray(r(images, prompts), np.float32) for r, _ in self.rewards}
        total = sum(w * parts[r.name] for r, w in self.rewards)
        return np.asarray(total, np.float32), parts

    def __call__(self, images, prompts: Sequence[str]) -> np.ndarray:
        return self.scores(images, prompts)[0]


REWARD_NAMES = ("checker", "checker_strict", "diversity", "clip", "learned")
WITH_RUN = ("clip", "learned")  # rewards read from a run folder: NAME:RUN


def parse_rewards(spec: str) -> WeightedRewards:
    """Rewards from a command-line spec: comma-separated ``NAME[:ARG][=WEIGHT]`` (weight 1 by default) with NAME
    one of ``checker`` (partial credit), ``checker_strict``, ``diversity`` (pixel features), ``clip:RUN``
    (image-text similarity under the ``task=clip`` model of run folder RUN) and ``learned:RUN`` (the score of the
    ``task=reward_model`` preference model of run folder RUN), e.g. ``checker=1,diversity=0.1``."""
    rewards = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        head, _, weight = item.partition("=")
        name, _, arg = head.partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise InputError(f"reward {item!r}: weight {weight!r} is not a number") from None
        if name not in REWARD_NAMES:
            raise InputError(f"reward {item!r}: unknown reward {name!r}; expected one of {list(REWARD_NAMES)}")
        if (name in WITH_RUN) != bool(arg):
            raise InputError(f"reward {item!r}: " + (f"{name} needs the run folder of a task="
                                                     f"{'clip' if name == 'clip' else 'reward_model'} model: {name}:RUN"
                                                     if name in WITH_RUN else f"{name} takes no argument"))
        if name == "learned":
            from canvas_jax.rl.reward_model import load_reward_model

            rewards.append((load_reward_model(arg), w))
        elif name == "clip":
            from canvas_jax.image_text import load_image_text_model

            rewards.append((ImageTextReward(load_image_text_model(arg), name="clip"), w))
        elif name == "diversity":
            rewards.append((DiversityReward(), w))
        else:
            rewards.append((CheckerReward(strict=name == "checker_strict"), w))
    if not rewards:
        raise InputError(f"reward spec {spec!r} names no reward; expected e.g. 'checker' or 'checker=1,diversity=0.1'")
    return WeightedRewards(rewards)
