"""Image and mask conversion for the pipeline (PIL or numpy in, NHWC float32 in [0, 1] inside) and PNG grids."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from canvas_jax.errors import InputError

ImageLike = "Image.Image | np.ndarray | Sequence[Image.Image] | Sequence[np.ndarray]"


def _one_to_array(image, what: str) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), np.float32)[None] / 255.0
    if isinstance(image, np.ndarray):
        x = image
        if x.ndim == 2:
            x = np.repeat(x[..., None], 3, axis=-1)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
            raise InputError(f"{what}: expected an HWC / NHWC array with 1, 3 or 4 channels, got shape {image.shape}")
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        x = x[..., :3]
        if np.issubdtype(x.dtype, np.integer):
            return x.astype(np.float32) / 255.0
        x = x.astype(np.float32)
        if x.size and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
            raise InputError(f"{what}: float images must lie in [0, 1], got values in [{x.min():.3g}, {x.max():.3g}]")
        return np.clip(x, 0.0, 1.0)
    raise TypeError(f"{what}: expected a PIL image, a numpy array or a list of them, got {type(image).__name__}")


def to_array(images, what: str = "image") -> np.ndarray:
    """PIL image(s) or numpy HWC/NHWC (uint8 0..255 or float 0..1) -> float32 NHWC RGB in [0, 1]."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError(f"{what}: got an empty list")
        arrays = [_one_to_array(im, what) for im in images]
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) > 1:
            raise InputError(f"{what}: all images of a batch must have one size, got {sorted(shapes)}")
        return np.concatenate(arrays, axis=0)
    return _one_to_array(images, what)


def mask_to_array(masks, what: str = "mask") -> np.ndarray:
    """Mask image(s) -> float32 NHW1 in [0, 1] (grey level; white = 1 = repaint)."""
    if isinstance(masks, Image.Image):
        return np.asarray(masks.convert("L"), np.float32)[None, ..., None] / 255.0
    if isinstance(masks, (list, tuple)):
        if not masks:
            raise InputError(f"{what}: got an empty list")
        return np.concatenate([mask_to_array(m, what) for m in masks], axis=0)
    if isinstance(masks, np.ndarray):
        x = masks
        if x.ndim == 2:
            x = x[None, ..., None]
        elif x.ndim == 3:
            x = x[..., None] if x.shape[-1] not in (1, 3) else x[None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise InputError(f"{what}: expected HW, HW1, NHW or NHWC (1 or 3 channels) arrays, got shape {masks.shape}")
        x = x.mean(axis=-1, keepdims=True) if x.shape[-1] == 3 else x
        return x.astype(np.float32) / 255.0 if np.issubdtype(masks.dtype, np.integer) else x.astype(np.float32)
    raise TypeError(f"{what}: expected a PIL image or a numpy array, got {type(masks).__name__}")


def resize(x: np.ndarray, height: int, width: int, resample=Image.LANCZOS) -> np.ndarray:
    """Resize NHWC float images in [0, 1] (any channel count) with PIL; a no-op when the size already matches."""
    if x.shape[1:3] == (height, width):
        return x
    out = []
    for img in x:
        chans = [np.asarray(Image.fromarray(img[..., c]).resize((width, height), resample)) for c in range(x.shape[-1])]
        out.append(np.stack(chans, axis=-1))
    return np.clip(np.stack(out).astype(np.float32), 0.0, 1.0)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """NHWC float images in [0, 1] -> PIL RGB images."""
    arr = (np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def make_grid(images: Sequence[Image.Image], *, cols: int | None = None,
              captions: Sequence[str] | None = None, caption_height: int = 12) -> Image.Image:
    """Tile equally sized images into one image, ``cols`` per row (default: near square); with ``captions``,
    a white strip under each tile holding its caption, word-wrapped to the tile width (``caption_height``
    pixels per line; PIL's default bitmap font is about 6 pixels per character)."""
    if not images:
        raise ValueError("make_grid: no images")
    w, h = images[0].size
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    lines = [textwrap.wrap(str(c), max(1, (w - 4) // 6)) or [""] for c in captions] if captions else []
    cap = caption_height * max(len(x) for x in lines) + 2 if captions else 0
    grid = Image.new("RGB", (cols * w, rows * (h + cap)), "white")
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        x, y = (i % cols) * w, (i // cols) * (h + cap)
        grid.paste(img.convert("RGB"), (x, y))
        for j, line in enumerate(lines[i] if captions else []):
            draw.text((x + 2, y + h + 1 + j * caption_height), line, fill="black")
    return grid


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation (transformers' OPENAI_CLIP_MEAN / STD)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _one_clip_input(image, size: int, what: str) -> np.ndarray:
    if isinstance(image, np.ndarray):
        x = image if image.ndim == 3 else (image[..., None] if image.ndim == 2 else None)
        if x is None or x.shape[-1] not in (1, 3, 4):
            raise InputError(f"{what}: expected one HWC image (1, 3 or 4 channels), got shape {image.shape}")
        if not np.issubdtype(x.dtype, np.integer):  # float in [0, 1]
            x = np.round(np.clip(_one_to_array(x, what)[0], 0.0, 1.0) * 255.0)
        x = x.astype(np.uint8)
        image = Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)
    if not isinstance(image, Image.Image):
        raise TypeError(f"{what}: expected PIL images or numpy arrays, got {type(image).__name__}")
    image = image.convert("RGB")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    image = image.resize((size, new_long) if w <= h else (new_long, size), Image.BICUBIC)
    x = np.asarray(image)
    top, left = (x.shape[0] - size) // 2, (x.shape[1] - size) // 2
    x = (x[top:top + size, left:left + size].astype(np.float64) * (1 / 255)).astype(np.float32)
    return (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def clip_image_inputs(images, size: int = 224, what: str = "ip_adapter_image") -> np.ndarray:
    """CLIP image encoder inputs as transformers' ``CLIPImageProcessor`` makes them (NHWC float32 here): resize the
    shortest side to ``size`` (PIL bicubic), center-crop ``size`` x ``size``, scale to [0, 1], normalise with the
    CLIP mean / std. ``images``: a PIL image, a uint8 (or [0, 1] float) HWC / NHWC array, or a list of them."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError(f"{what}: got an empty list")
        return np.stack([_one_clip_input(im, size, what) for im in images])
    return _one_clip_input(images, size, what)[None]
