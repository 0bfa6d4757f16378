"""Evaluation metrics for generated images: class accuracy under a classifier, inpainting PSNR of the region
that must not change, and prompt adherence (the fraction a checker accepts), seen vs held-out prompts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def accuracy(model, images, labels, *, batch_size: int = 256) -> float:
    """Fraction of ``images`` [N, H, W, 3] that ``model`` (a SmallCNN) assigns to ``labels`` [N] (e.g. the class
    named in each image's prompt)."""
    from canvas_jax.eval.classifier import predict_logits

    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise ValueError(f"accuracy: {len(images)} images but {len(labels)} labels")
    return float(np.mean(predict_logits(model, images, batch_size=batch_size).argmax(-1) == labels))


def psnr(x, y, *, weight=None, data_range: float = 2.0) -> np.ndarray:
    """Per-image PSNR in dB between image batches [N, H, W, C] (``data_range`` 2 for [-1, 1], 255 for uint8).

    ``weight`` [N, H, W, 1 or C] in [0, 1] restricts the mean squared error to the weighted pixels. Identical
    images give ``inf``; an image with no weighted pixel gives ``nan``.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"psnr expects two image batches [N, H, W, C] of one shape, got {x.shape} and {y.shape}")
    w = np.ones(x.shape[:3] + (1,)) if weight is None else np.asarray(weight, np.float64)
    if w.ndim != 4 or w.shape[:3] != x.shape[:3] or w.shape[3] not in (1, x.shape[3]):
        raise ValueError(f"psnr: weight must be [N, H, W, 1] or [N, H, W, C] matching {x.shape}, got {w.shape}")
    w = np.broadcast_to(w, x.shape)
    sq = np.square(x - y) * w
    total = w.sum(axis=(1, 2, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        mse = sq.sum(axis=(1, 2, 3)) / total
        return 10.0 * np.log10(data_range ** 2 / mse)


def unmasked_psnr(output, reference, mask, *, data_range: float = 2.0) -> np.ndarray:
    """Inpainting: per-image PSNR of the region *outside* the mask (``mask`` [N, H, W, 1], 1 = repainted)
    between the output and the input image; it should be high, since that region must be kept."""
    mask = np.asarray(mask, np.float64)
    if mask.min(initial=0.0) < 0 or mask.max(initial=0.0) > 1:
        raise ValueError("unmasked_psnr: mask values must lie in [0, 1] (1 = region to repaint)")
    return psnr(output, reference, weight=1.0 - mask, data_range=data_range)


def adherence_report(accepted: Sequence[bool], held_out: Sequence[bool] | None = None) -> dict:
    """Prompt adherence: the fraction of images accepted, overall and split into prompts seen in training and
    held-out ones (``held_out[i]`` True when image i's prompt is a held-out combination). A split with no
    images reports ``None``."""
    acc = np.asarray(accepted, dtype=bool).reshape(-1)
    held = np.zeros_like(acc) if held_out is None else np.asarray(held_out, dtype=bool).reshape(-1)
    if held.shape != acc.shape:
        raise ValueError(f"adherence_report: {acc.size} results but {held.size} held-out flags")

    def frac(sel):
        return float(acc[sel].mean()) if sel.any() else None

    return {"adherence": frac(np.ones_like(acc)), "adherence_seen": frac(~held), "adherence_held_out": frac(held),
            "n": int(acc.size), "n_seen": int((~held).sum()), "n_held_out": int(held.sum())}


def prompt_adherence(checker: Callable[[np.ndarray, str], bool], images, captions: Sequence[str],
                     held_out: Sequence[bool] | None = None) -> tuple[dict, list[bool]]:
    """Run ``checker(image, caption) -> bool`` (e.g. the Shapes checker) on every image and aggregate with
    :func:`adherence_report`; returns (report, per-image results)."""
    if len(images) != len(captions):
        raise ValueError(f"prompt_adherence: {len(images)} images but {len(captions)} captions")
    results = [bool(checker(np.asarray(img), cap)) for img, cap in zip(images, captions)]
    return adherence_report(results, held_out), results
