"""Shapes prompt adherence: the fraction of generated images the Shapes checker accepts, reported separately for
prompts whose every (colour, shape) was seen in training and for prompts holding a held-out combination.

Next to it, the same checker on the VAE's reconstructions of the prompts' rendered ground truth
(``vae_ceiling_seen`` / ``_heldout``): a VAE that cannot give the shapes back caps what a denoiser on it
reaches in practice, so a shortfall can be put on the VAE or on the denoiser (not a strict bound: the
decoder may render a sample's latents better than the encoding of the rendered truth).

Prompts are scenes of one to three shapes like the training captions (``kind="scenes"``,
:func:`canvas_jax.data.shapes.sample_prompts`) or single shapes (``kind="single"``, a seeded choice from
:func:`canvas_jax.data.shapes.enumerate_prompts`); both are deterministic from the seed.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time

import numpy as np

from canvas_jax.data import shapes
from canvas_jax.data.checker import MIN_FIT, check
from canvas_jax.errors import InputError
from canvas_jax.eval.metrics import adherence_report, prompt_adherence
from canvas_jax.eval.sampling import SamplingOptions, generate, to_uint8

PROMPT_KINDS = ("scenes", "single")


@dataclasses.dataclass
class ShapesSamples:
    captions: list[str]
    heldout: np.ndarray  # bool [N]
    images: np.ndarray  # uint8 [N, H, W, 3]


def shapes_config_for(model_path: str | os.PathLike, size: int) -> shapes.ShapesConfig:
    """The Shapes setup a model was trained on: a training run folder's ``data.options`` (held-out pairs,
    backgrounds, shape counts) when it trained on ``dataset: shapes``, else the defaults; at ``size`` pixels."""
    from canvas_jax.runs import is_run_dir, load_config

    options = {}
    if is_run_dir(model_path):
        cfg = load_config(model_path)
        if cfg.data.dataset == "shapes":
            options = dict(cfg.data.options)
    return shapes.ShapesConfig(resolution=size, **options)


def shapes_prompts(n: int, cfg: shapes.ShapesConfig = shapes.ShapesConfig(), *, heldout: bool = False,
                   kind: str = "scenes", seed: int = 0) -> list[str]:
    """``n`` captions (seen, or each holding a held-out combination); ``single`` gives at most as many as exist."""
    if kind not in PROMPT_KINDS:
        raise InputError(f"prompt kind {kind!r}: expected one of {', '.join(PROMPT_KINDS)}")
    if n < 1:
        raise InputError(f"number of prompts must be >= 1, got {n}")
    if heldout and not cfg.holdout:
        raise InputError("no held-out (colour, shape) combination is configured, so there are no held-out prompts")
    if kind == "scenes":
        return [c for c, _ in shapes.sample_prompts(n, cfg, heldout=heldout, seed=seed)]
    pool = [c for c, _ in shapes.enumerate_prompts(cfg, heldout=heldout)]
    pick = np.random.default_rng([seed, 7, int(heldout)]).permutation(len(pool))[:n]
    return [pool[i] for i in sorted(pick)]


def generate_shapes(pipe, cfg: shapes.ShapesConfig, *, num_prompts: int = 64, kind: str = "scenes",
                    opts: SamplingOptions = SamplingOptions()) -> ShapesSamples:
    """``num_prompts`` seen and ``num_prompts`` held-out prompts, one image each at ``cfg.resolution``."""
    seen = shapes_prompts(num_prompts, cfg, kind=kind, seed=opts.seed)
    held = shapes_prompts(num_prompts, cfg, heldout=True, kind=kind, seed=opts.seed) if cfg.holdout else []
    captions = seen + held
    images = generate(pipe, captions, opts, size=cfg.resolution)
    return ShapesSamples(captions, np.array([False] * len(seen) + [True] * len(held)), images)


def reconstructions(vae, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 NHWC images through ``vae`` (encode to the posterior mode, decode)."""
    import jax.numpy as jnp

    out = []
    for i in range(0, len(images), batch_size):
        x = jnp.asarray(images[i:i + batch_size], jnp.float32) / 127.5 - 1.0
        out.append(to_uint8((np.asarray(vae.decode(vae.encode(x).mode()), np.float32) + 1.0) / 2.0))
    return np.concatenate(out)


def vae_ceiling(vae, samples: ShapesSamples, cfg: shapes.ShapesConfig) -> dict:
    """Adherence of ``vae``'s reconstructions of each prompt's ground truth (first configured background)."""
    truth = np.stack([shapes.render(shapes.Scene(shapes.parse_caption(c), cfg.backgrounds[0]), cfg.resolution)
                      for c in samples.captions])
    report, _ = prompt_adherence(check, reconstructions(vae, truth), samples.captions, samples.heldout)
    return {"vae_ceiling_seen": report["adherence_seen"], "vae_ceiling_heldout": report["adherence_held_out"]}


def adherence(samples: ShapesSamples) -> tuple[dict, list[bool]]:
    """(``adherence``, ``adherence_seen``, ``adherence_heldout``, counts, the checker's ``min_fit`` and the
    failures by reason (``count``, ``form``, ``position``, ``color``, ``shape``, ``size``); per-image results)."""
    checks = [check(im, c) for im, c in zip(samples.images, samples.captions)]
    results = [bool(r) for r in checks]
    report = adherence_report(results, samples.heldout)
    failures = collections.Counter(r.reason.split(":")[0] for r in checks if not r)
    return {"adherence": report["adherence"], "adherence_seen": report["adherence_seen"],
            "adherence_heldout": report["adherence_held_out"], "n_seen": report["n_seen"],
            "n_heldout": report["n_held_out"], "checker_min_fit": MIN_FIT,
            "failures": dict(sorted(failures.items()))}, results


def save_grid(samples: ShapesSamples, results: list[bool], path: str | os.PathLike, *, tile: int = 128,
              cols: int = 8) -> None:
    """A PNG grid, tiles upscaled to ``tile`` pixels, each captioned "ok" / "NO" (checker), "H" (held-out
    prompt) and its prompt."""
    from PIL import Image

    from canvas_jax.images import make_grid

    tiles = [Image.fromarray(im).resize((tile, tile), Image.Resampling.NEAREST) for im in samples.images]
    short = [c.replace("a ", "").replace("at the ", "").replace(" and ", "; ") for c in samples.captions]
    captions = [f"{'ok' if ok else 'NO'}{' H' if h else ''} {c}" for ok, h, c in zip(results, samples.heldout, short)]
    make_grid(tiles, cols=min(cols, len(tiles)), captions=captions).save(path)


def evaluate_shapes(pipe, cfg: shapes.ShapesConfig, *, num_prompts: int = 64, kind: str = "scenes",
                    opts: SamplingOptions = SamplingOptions(), grid: str | os.PathLike | None = None) -> dict:
    """Generate and score (see the module docstring); with ``grid``, also save the captioned PNG grid."""
    t0 = time.perf_counter()
    samples = generate_shapes(pipe, cfg, num_prompts=num_prompts, kind=kind, opts=opts)
    report, results = adherence(samples)
    if grid is not None:
        save_grid(samples, results, grid)
    return {"eval": "shapes", **report, **vae_ceiling(pipe.vae, samples, cfg), "prompt_kind": kind,
            "image_size": cfg.resolution, "heldout_combinations": [" ".join(p) for p in cfg.holdout],
            **opts.describe(),
            "seconds": round(time.perf_counter() - t0, 2)}
