"""Random inpainting masks, float32 [H, W, 1] with 1 = region to repaint, deterministic from a numpy Generator.

* :func:`rectangles`: one or more axis-aligned boxes;
* :func:`brush_strokes`: thick polylines with round joints (free-form masks as in LaMa / SD inpainting);
* :func:`outpaint_border`: a band along one or more image sides (random widths), the centre kept;
* :func:`random_mask`: one of the kinds above, picked at random.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from canvas_jax.errors import InputError

MASK_KINDS = ("rectangles", "brush", "outpaint")


def _check_size(height: int, width: int) -> None:
    if height < 2 or width < 2:
        raise InputError(f"mask size {height}x{width}: expected at least 2x2 pixels")


def _check_range(name: str, lo: float, hi: float, upper: float) -> None:
    if not 0 < lo <= hi <= upper:
        raise InputError(f"{name}=({lo}, {hi}): expected 0 < low <= high <= {upper}")


def rectangles(rng: np.random.Generator, height: int, width: int, *, count: tuple[int, int] = (1, 3),
               size: tuple[float, float] = (0.2, 0.6)) -> np.ndarray:
    """``count`` (inclusive range) random boxes, each side a ``size`` fraction of the image side."""
    _check_size(height, width)
    _check_range("size", *size, 1.0)
    if not 1 <= count[0] <= count[1]:
        raise InputError(f"count={count}: expected 1 <= low <= high")
    mask = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        h = max(1, round(rng.uniform(*size) * height))
        w = max(1, round(rng.uniform(*size) * width))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        mask[y:y + h, x:x + w] = 1.0
    return mask[..., None]


def brush_strokes(rng: np.random.Generator, height: int, width: int, *, strokes: tuple[int, int] = (1, 4),
                  vertices: tuple[int, int] = (3, 8), thickness: tuple[float, float] = (0.06, 0.15),
                  step: float = 0.25) -> np.ndarray:
    """Random-walk polylines; ``thickness`` and ``step`` (segment length) are fractions of the image side."""
    _check_size(height, width)
    _check_range("thickness", *thickness, 1.0)
    if not 1 <= strokes[0] <= strokes[1] or not 2 <= vertices[0] <= vertices[1]:
        raise InputError(f"strokes={strokes}, vertices={vertices}: expected 1 <= strokes, 2 <= vertices (low <= high)")
    side = min(height, width)
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(strokes[0], strokes[1] + 1))):
        radius = max(1.0, rng.uniform(*thickness) * side / 2)
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        points = [(x, y)]
        for _ in range(int(rng.integers(vertices[0], vertices[1] + 1)) - 1):
            angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.0) * step * side
            x = float(np.clip(x + length * np.cos(angle), 0, width - 1))
            y = float(np.clip(y + length * np.sin(angle), 0, height - 1))
            points.append((x, y))
        draw.line(points, fill=255, width=max(1, round(2 * radius)))
        for px, py in points:  # round joints and caps
            draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=255)
    return (np.asarray(img, np.float32) / 255.0 >= 0.5).astype(np.float32)[..., None]


def outpaint_border(rng: np.random.Generator, height: int, width: int, *, max_fraction: float = 0.5,
                    min_fraction: float = 0.1, sides: int | None = None) -> np.ndarray:
    """A border band on ``sides`` random sides (default: 1 to 4), each as wide as a random fraction in
    [``min_fraction``, ``max_fraction``] of the image; the two bands on opposite sides leave >= 1 pixel."""
    _check_size(height, width)
    _check_range("(min_fraction, max_fraction)", min_fraction, max_fraction, 1.0)
    if sides is not None and not 1 <= sides <= 4:
        raise InputError(f"sides={sides}: expected 1 to 4")
    n = int(rng.integers(1, 5)) if sides is None else sides
    chosen = rng.choice(4, size=n, replace=False)  # 0 left, 1 top, 2 right, 3 bottom
    widths = np.zeros(4, np.int64)
    for s in chosen:
        extent = width if s in (0, 2) else height
        widths[s] = max(1, round(rng.uniform(min_fraction, max_fraction) * extent))
    left, top, right, bottom = (int(v) for v in widths)
    while left + right >= width:  # keep a visible centre
        left, right = max(left - 1, 0), max(right - 1, 0)
    while top + bottom >= height:
        top, bottom = max(top - 1, 0), max(bottom - 1, 0)
    mask = np.ones((height, width), np.float32)
    mask[top:height - bottom, left:width - right] = 0.0
    return mask[..., None]


def random_mask(rng: np.random.Generator, height: int, width: int, kinds: Sequence[str] = MASK_KINDS,
                probs: Sequence[float] | None = None) -> np.ndarray:
    """A mask of a kind drawn from ``kinds`` (with probabilities ``probs``; default uniform)."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in MASK_KINDS]
    if not kinds or bad:
        raise InputError(f"mask kinds {list(kinds)}: expected a non-empty subset of {', '.join(MASK_KINDS)}")
    if probs is not None and (len(probs) != len(kinds) or min(probs) < 0 or sum(probs) <= 0):
        raise InputError(f"mask probs {list(probs)}: expected {len(kinds)} non-negative weights, not all zero")
    p = None if probs is None else np.asarray(probs, np.float64) / np.sum(probs)
    kind = kinds[int(rng.choice(len(kinds), p=p))]
    fn = {"rectangles": rectangles, "brush": brush_strokes, "outpaint": outpaint_border}[kind]
    return fn(rng, height, width)
