"""Inpainting on Shapes test scenes: mask part of a scene, repaint it with the scene's caption, and report

* ``unmasked_psnr_db``: mean PSNR (dB, capped at :data:`MAX_PSNR_DB`) of the region outside the mask against
  the input; the pipeline does not paste the input back, so this measures what the model kept;
* ``adherence_in_mask``: the fraction of outputs the Shapes checker accepts for the full caption (what was
  masked has been redrawn as asked), with ``adherence_input`` the same on the untouched inputs.

Masks: ``shape`` (a rectangle over one of the scene's shapes, one pixel wider on each side) or ``random``
(:func:`canvas_jax.data.masks.random_mask`). Scenes, shapes and masks are deterministic from the seed.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from canvas_jax.data import shapes
from canvas_jax.data.checker import check
from canvas_jax.data.masks import random_mask
from canvas_jax.errors import InputError
from canvas_jax.eval.metrics import unmasked_psnr
from canvas_jax.eval.sampling import SamplingOptions, inpaint

MASK_KINDS = ("shape", "random")
MAX_PSNR_DB = 100.0  # identical regions give infinity; JSON has no infinity


@dataclasses.dataclass
class InpaintCases:
    images: np.ndarray  # uint8 [N, H, W, 3]
    masks: np.ndarray  # float32 [N, H, W, 1], 1 = repaint
    captions: list[str]
    heldout: np.ndarray  # bool [N]: the scene holds a held-out combination


def shape_mask(spec: shapes.ShapeSpec, size: int, margin: int = 1) -> np.ndarray:
    """float32 [size, size, 1]: the pixel rectangle around one shape's box, ``margin`` pixels wider."""
    x0, y0, x1, y1 = shapes.shape_box(spec, size)
    mask = np.zeros((size, size, 1), np.float32)
    top, left = max(math.floor(y0) - margin, 0), max(math.floor(x0) - margin, 0)
    mask[top:min(math.ceil(y1) + margin, size), left:min(math.ceil(x1) + margin, size)] = 1.0
    return mask


def inpaint_cases(n: int, cfg: shapes.ShapesConfig = shapes.ShapesConfig(), *, masks: str = "shape",
                  seed: int = 0) -> InpaintCases:
    """``n`` Shapes test-split scenes with their masks."""
    if masks not in MASK_KINDS:
        raise InputError(f"mask kind {masks!r}: expected one of {', '.join(MASK_KINDS)}")
    if n < 1:
        raise InputError(f"number of images must be >= 1, got {n}")
    source = shapes.ShapesSource(cfg, num_examples=n, seed=seed, split="test")
    rng = np.random.default_rng([seed, 31])
    images, mask_list, captions, held = [], [], [], []
    r = cfg.resolution
    for i in range(n):
        ex = source[i]
        scene = shapes.Scene.from_json(ex["scene"])
        images.append(ex["image"])
        captions.append(ex["caption"])
        held.append(bool(ex["heldout"]))
        if masks == "shape":
            mask_list.append(shape_mask(scene.shapes[int(rng.integers(len(scene.shapes)))], r))
        else:
            mask_list.append(random_mask(rng, r, r))
    return InpaintCases(np.stack(images), np.stack(mask_list), captions, np.asarray(held))


def score_inpaint(outputs, cases: InpaintCases) -> dict:
    """The metrics of the module docstring for ``outputs`` (uint8 [N, H, W, 3]) of ``cases``."""
    outputs = np.asarray(outputs)
    if outputs.shape != cases.images.shape:
        raise ValueError(f"score_inpaint: outputs {outputs.shape} differ from inputs {cases.images.shape}")
    db = unmasked_psnr(outputs.astype(np.float32) / 255.0, cases.images.astype(np.float32) / 255.0, cases.masks,
                       data_range=1.0)
    db = np.minimum(db, MAX_PSNR_DB)  # nan (everything masked) stays nan and is left out of the mean
    ok = np.array([bool(check(o, c)) for o, c in zip(outputs, cases.captions)])
    inputs_ok = np.array([bool(check(im, c)) for im, c in zip(cases.images, cases.captions)])

    def frac(values, sel):
        return float(values[sel].mean()) if sel.any() else None

    finite = db[~np.isnan(db)]
    return {"unmasked_psnr_db": float(finite.mean()) if finite.size else None,
            "adherence_in_mask": float(ok.mean()), "adherence_in_mask_seen": frac(ok, ~cases.heldout),
            "adherence_in_mask_heldout": frac(ok, cases.heldout), "adherence_input": float(inputs_ok.mean()),
            "masked_fraction": float(cases.masks.mean()), "n": len(outputs),
            "n_heldout": int(cases.heldout.sum())}


def evaluate_inpaint(pipe, cfg: shapes.ShapesConfig, *, num_images: int = 64, masks: str = "shape",
                     opts: SamplingOptions = SamplingOptions()) -> dict:
    """Build the cases at ``cfg.resolution``, inpaint them with ``pipe`` and score them."""
    t0 = time.perf_counter()
    cases = inpaint_cases(num_images, cfg, masks=masks, seed=opts.seed)
    outputs = inpaint(pipe, cases.images, cases.masks, cases.captions, opts)
    return {"eval": "inpaint", **score_inpaint(outputs, cases), "masks": masks, "image_size": cfg.resolution,
            **opts.describe(), "seconds": round(time.perf_counter() - t0, 2)}
