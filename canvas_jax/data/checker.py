"""A deterministic checker: does a Shapes image show what its caption asks for (colour, shape, size,
position, count)?

How it sees an image: the background is the median colour of the border; every pixel goes to the nearest
of (background, palette colours) and counts for a palette colour only when it lies within ``tolerance`` of
it (anti-aliased edges and stray noise fall out); 4-connected components of each colour smaller than
``min_area`` of a small triangle are ignored. A component's position is the grid cell of its centroid, its
size is its box side against the cell (small 0.55, large 0.9), and its shape is the template (circle,
square, triangle, diamond drawn into the component's box, as the renderer draws them) with the highest
intersection-over-union with the component.

A shape must also be well formed: its best template's soft IoU (``Detection.iou``, the *fit*) must reach
``min_fit``, else the image fails with reason ``form`` (a blob is not read as whichever shape it resembles
most). ``MIN_FIT`` = 0.82 is calibrated on true renders (``benchmarks/checker_calibration.py``: test-split
scenes of one to three shapes, rendered by :func:`canvas_jax.data.shapes.render`): the lowest fit in an image
is 0.8206 at worst, 0.8305 at the 0.5th percentile and 0.934 at the median over 2,000 scenes at 32 px on white
(the hardest background), so all of them pass; at 64 px every background's lowest fit is >= 0.93 (500 scenes
each). Below 32 px the rasterised shapes are too coarse for the checker (at 16 px even the fit-free check
rejects 9% of true renders). ``min_fit=0`` gives the earlier, lenient checker, which ignored the fit.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from canvas_jax.data.shapes import (
    PALETTE,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeSpec,
    draw_shape,
    parse_caption,
)
from canvas_jax.errors import InputError

_TEMPLATE_SUPERSAMPLE = 4
_OFFSETS = (-0.2, 0.0, 0.2)  # pixels
_SCALES = (0.95, 1.0, 1.05)
MIN_FIT = 0.82  # calibration: module docstring


@dataclasses.dataclass(frozen=True)
class Detection:
    """One shape found in an image."""

    spec: ShapeSpec
    area: int
    centroid: tuple[float, float]  # (x, y) pixels
    iou: float  # of the best shape template


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """``ok`` plus a human-readable ``reason``; truthy when ok."""

    ok: bool
    reason: str
    detections: tuple[Detection, ...] = ()

    def __bool__(self) -> bool:
        return self.ok


def _validate(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise InputError(f"image: expected uint8 [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        raise InputError(f"image: expected dtype uint8 (0..255), got {image.dtype}")
    if image.shape[0] < 9 or image.shape[1] < 9:
        raise InputError(f"image: expected at least 9x9 pixels (a 3x3 grid), got {image.shape[:2]}")
    return image


_FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5, "diamond": 0.5}  # area / box area
_CENTROID_DY = {"triangle": 1 / 6}  # centroid below the box centre, in box sides (apex-up triangle)


def _render_alpha(shape: str, box, size: tuple[int, int]) -> np.ndarray:
    """Coverage in [0, 1] of ``shape`` in ``box`` (pixel coordinates) on an h x w window, drawn like
    :func:`canvas_jax.data.shapes.render` (4x supersampled, box-filtered)."""
    s = _TEMPLATE_SUPERSAMPLE
    h, w = size
    img = Image.new("L", (w * s, h * s), 0)
    x0, y0, x1, y1 = box
    draw_shape(ImageDraw.Draw(img), shape, (x0 * s, y0 * s, x1 * s - 1, y1 * s - 1), 255)
    return np.asarray(img.resize((w, h), Image.Resampling.BOX), np.float32) / 255.0


def _fit_shape(alpha: np.ndarray) -> tuple[str, float, float]:
    """Analysis by synthesis: for each shape, the box implied by the coverage's area and centroid, drawn
    and compared with ``alpha``. Returns (shape, box side in pixels, match score in [0, 1])."""
    total = float(alpha.sum())
    ys, xs = np.mgrid[: alpha.shape[0], : alpha.shape[1]]
    cx, cy = float((alpha * (xs + 0.5)).sum() / total), float((alpha * (ys + 0.5)).sum() / total)
    best = ("", 0.0, -1.0)
    for shape in SHAPES:
        side0 = float(np.sqrt(total / _FILL[shape]))
        by0 = cy - _CENTROID_DY.get(shape, 0.0) * side0
        # a small search around the moment estimate absorbs the rasteriser's sub-pixel bias
        for dx, dy, scale in itertools.product(_OFFSETS, _OFFSETS, _SCALES):
            side, bx, by = side0 * scale, cx + dx, by0 + dy
            box = (bx - side / 2, by - side / 2, bx + side / 2, by + side / 2)
            t = _render_alpha(shape, box, alpha.shape)
            score = float(np.minimum(t, alpha).sum() / max(np.maximum(t, alpha).sum(), 1e-6))  # soft IoU
            if score > best[2]:
                best = (shape, side, score)
    return best


def detect(image, *, palette: dict[str, tuple[int, int, int]] = PALETTE, tolerance: float = 100.0,
           min_area: float = 0.35) -> list[Detection]:
    """The shapes in a uint8 [H, W, 3] image, in reading order of their centroids."""
    image = _validate(image)
    h, w = image.shape[:2]
    x = image.astype(np.float32)
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    background = np.median(border, axis=0)
    names = list(palette)
    refs = np.stack([background, *(np.asarray(palette[n], np.float32) for n in names)])
    dist = np.linalg.norm(x[:, :, None, :] - refs[None, None], axis=-1)  # [H, W, 1 + colours]
    nearest = dist.argmin(-1)
    cell_w, cell_h = w / 3, h / 3
    small_side = SIZES["small"] * min(cell_w, cell_h)
    min_pixels = max(2.0, min_area * 0.5 * small_side**2)
    size_split = (SIZES["small"] + SIZES["large"]) / 2
    found = []
    for k, name in enumerate(names, start=1):
        mask = (nearest == k) & (dist[..., k] < tolerance)
        if not mask.any():
            continue
        labels, _count = ndimage.label(mask)
        for idx, slc in enumerate(ndimage.find_objects(labels), start=1):
            comp = labels == idx
            area = int(comp[slc].sum())
            if area < min_pixels:
                continue
            # soft coverage of this colour over the component grown by one pixel (its anti-aliased rim)
            y0, y1 = max(slc[0].start - 2, 0), min(slc[0].stop + 2, h)
            x0, x1 = max(slc[1].start - 2, 0), min(slc[1].stop + 2, w)
            region = ndimage.binary_dilation(comp[y0:y1, x0:x1]) & ((labels[y0:y1, x0:x1] == 0) |
                                                                     comp[y0:y1, x0:x1])
            region &= (nearest[y0:y1, x0:x1] == 0) | (nearest[y0:y1, x0:x1] == k)
            axis = refs[k] - background
            alpha = ((x[y0:y1, x0:x1] - background) @ axis) / max(float(axis @ axis), 1e-6)
            alpha = np.where(region, np.clip(alpha, 0.0, 1.0), 0.0)
            shape, side, iou = _fit_shape(alpha)
            ys, xs = np.nonzero(comp[slc])
            cy, cx = ys.mean() + slc[0].start + 0.5, xs.mean() + slc[1].start + 0.5
            row, col = min(int(cy // cell_h), 2), min(int(cx // cell_w), 2)
            size = "large" if side / min(cell_h, cell_w) >= size_split else "small"
            spec = ShapeSpec(shape=shape, color=name, size=size, position=POSITIONS[row * 3 + col])
            found.append(Detection(spec, area, (float(cx), float(cy)), iou))
    found.sort(key=lambda d: (POSITIONS.index(d.spec.position), -d.area))
    return found


def _expected(target) -> tuple[ShapeSpec, ...]:
    if isinstance(target, str):
        return parse_caption(target)
    if isinstance(target, Scene):
        return target.shapes
    if isinstance(target, ShapeSpec):
        return (target,)
    if isinstance(target, Sequence) and all(isinstance(s, ShapeSpec) for s in target):
        return tuple(target)
    raise InputError(f"target: expected a caption string, a Scene or a list of ShapeSpec, got {type(target).__name__}")


def _name(spec: ShapeSpec, with_size: bool) -> str:
    return f"{spec.size + ' ' if with_size else ''}{spec.color} {spec.shape}"


def check(image, target, *, check_size: bool = True, palette: dict[str, tuple[int, int, int]] = PALETTE,
          tolerance: float = 100.0, min_area: float = 0.35, min_fit: float = MIN_FIT) -> CheckResult:
    """Whether ``image`` (uint8 [H, W, 3]) matches ``target`` (a caption, a Scene or ShapeSpecs): the same
    number of shapes, every one well formed (template fit >= ``min_fit``), and at each asked-for position a
    shape of the asked colour, shape (and size)."""
    if not 0.0 <= min_fit <= 1.0:
        raise InputError(f"min_fit={min_fit}: expected a template fit (soft IoU) in [0, 1]")
    expected = _expected(target)
    found = detect(image, palette=palette, tolerance=tolerance, min_area=min_area)
    seen = ", ".join(f"{_name(d.spec, check_size)} at the {d.spec.position}" for d in found) or "nothing"
    if len(found) != len(expected):
        return CheckResult(False, f"count: expected {len(expected)} shape(s), found {len(found)} ({seen})",
                           tuple(found))
    for d in found:
        if d.iou < min_fit:
            return CheckResult(False, f"form: the {d.spec.color} shape at the {d.spec.position} is ill-formed "
                                      f"(best template {d.spec.shape}, fit {d.iou:.2f} < {min_fit:.2f})",
                               tuple(found))
    by_cell = {d.spec.position: d for d in found}
    for spec in expected:
        d = by_cell.get(spec.position)
        if d is None:
            return CheckResult(False, f"position: no shape at the {spec.position} (expected a "
                                      f"{_name(spec, check_size)}; found {seen})", tuple(found))
        for field in ("color", "shape") + (("size",) if check_size else ()):
            if getattr(d.spec, field) != getattr(spec, field):
                return CheckResult(False, f"{field}: at the {spec.position} expected a {_name(spec, check_size)}, "
                                          f"found a {_name(d.spec, check_size)}", tuple(found))
    return CheckResult(True, f"matches ({seen})", tuple(found))


def adherence(images, targets, **kwargs) -> float:
    """Fraction of images the checker accepts against their targets (captions / scenes)."""
    if len(images) != len(targets):
        raise InputError(f"got {len(images)} images but {len(targets)} targets")
    if not len(images):
        raise InputError("adherence of an empty set: expected at least one image")
    return float(np.mean([bool(check(im, t, **kwargs)) for im, t in zip(images, targets)]))
