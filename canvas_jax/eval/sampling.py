"""Batched generation for evaluation: text-to-image and inpainting with a :class:`canvas_jax.Pipeline`.

Every image's starting noise is drawn from ``np.random.default_rng([seed, index])``, so an image does not
depend on the batch size or on its batch neighbours (with a deterministic sampler such as ``dpmpp_2m`` or
``ddim``), and two samplers given the same seed start from the same noise. The last batch is padded to
the batch size (one compiled program for every batch). Outputs are uint8 NHWC.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from canvas_jax.diffusion.plans import SAMPLERS
from canvas_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    sampler: str = "dpmpp_2m"
    num_steps: int = 20
    guidance_scale: float = 3.0
    seed: int = 0
    batch_size: int = 32
    progress: bool = False  # tqdm bar over batches
    eta: float = 0.0  # DDIM's noise scale (eta > 0: a stochastic sampler, its noise drawn from ``seed``)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise InputError(f"sampler {self.sampler!r}: expected one of {', '.join(SAMPLERS)}")
        if self.num_steps < 1:
            raise InputError(f"steps must be >= 1, got {self.num_steps}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.eta < 0:
            raise InputError(f"eta must be >= 0, got {self.eta}")

    def describe(self) -> dict:
        """The settings a report should carry."""
        return {"sampler": self.sampler, "steps": self.num_steps, "guidance_scale": self.guidance_scale,
                "seed": self.seed, **({"eta": self.eta} if self.eta else {})}


def to_uint8(images) -> np.ndarray:
    """NHWC float in [0, 1] -> uint8 [0, 255]."""
    return (np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _noise(pipe, indices: Sequence[int], size: int, seed: int) -> np.ndarray:
    """NCHW unit-variance starting latents, one per image index."""
    shape = (pipe.unet.config["out_channels"], size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    return np.stack([np.random.default_rng([seed, int(i)]).standard_normal(shape, np.float32) for i in indices])


def _pad(items: list, n: int) -> list:
    return items + [items[-1]] * (n - len(items))


def _run_batched(pipe, n: int, size: int, opts: SamplingOptions, call, desc: str) -> np.ndarray:
    """``call(rows, latents)`` -> NHWC float images for a batch of row indices; rows padded to the batch size."""
    if n < 1:
        raise InputError(f"{desc}: nothing to generate (0 images)")
    pipe.check_size(size, size)
    bs = min(opts.batch_size, n)
    out = []
    for start in tqdm(range(0, n, bs), desc=desc, disable=not opts.progress):
        rows = list(range(start, min(start + bs, n)))
        padded = _pad(rows, bs)
        images = call(padded, _noise(pipe, padded, size, opts.seed))
        out.append(to_uint8(images[: len(rows)]))
    return np.concatenate(out)


def generate(pipe, prompts: Sequence[str], opts: SamplingOptions = SamplingOptions(), *,
             size: int | None = None) -> np.ndarray:
    """Text to image: uint8 [N, size, size, 3], one image per prompt (``size`` default: the model's)."""
    prompts = list(prompts)
    size = size or pipe.default_size

    def call(rows, latents):
        return pipe([prompts[i] for i in rows], height=size, width=size, num_steps=opts.num_steps,
                    guidance_scale=opts.guidance_scale, sampler=opts.sampler, seed=opts.seed, eta=opts.eta,
                    latents=latents, output_type="np").images

    return _run_batched(pipe, len(prompts), size, opts, call, "generate")


def inpaint(pipe, images, masks, prompts: Sequence[str], opts: SamplingOptions = SamplingOptions(), *,
            keep_unmasked: bool = False) -> np.ndarray:
    """Repaint ``masks`` (float [N, H, W, 1], 1 = repaint) of ``images`` (uint8 [N, H, W, 3]) following
    ``prompts``; uint8 [N, H, W, 3]. ``keep_unmasked=False``: no paste-back of the input outside the mask,
    so that region shows what the model itself kept."""
    images, masks, prompts = np.asarray(images), np.asarray(masks, np.float32), list(prompts)
    if images.ndim != 4 or images.shape[-1] != 3 or masks.shape != images.shape[:3] + (1,):
        raise ValueError(f"inpaint: expected images [N, H, W, 3] and masks [N, H, W, 1], got {images.shape} and "
                         f"{masks.shape}")
    if len(prompts) != len(images):
        raise ValueError(f"inpaint: {len(images)} images but {len(prompts)} prompts")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"inpaint: expected square images, got {images.shape[1]}x{images.shape[2]}")

    def call(rows, latents):
        return pipe.inpaint(images[rows], masks[rows], [prompts[i] for i in rows], num_steps=opts.num_steps,
                            guidance_scale=opts.guidance_scale, sampler=opts.sampler, seed=opts.seed, eta=opts.eta,
                            latents=latents, output_type="np", keep_unmasked=keep_unmasked).images

    return _run_batched(pipe, len(images), images.shape[1], opts, call, "inpaint")
