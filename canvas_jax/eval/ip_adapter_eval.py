"""Shapes adherence of an IP-Adapter (``task=ip_adapter``), the image embedded by a ``task=clip`` run.

- **Image variation** (:func:`image_variation`): an empty prompt and a reference image (a *jittered* rendering of
  a scene, so the model cannot copy pixels); the Shapes checker scores the generated image against the
  reference's caption, for seen scenes and scenes holding a held-out (colour, shape) pair.
- **Composition** (:func:`composition`): the reference shows one shape (colour, kind) in one cell; the text names
  only another cell ("at the top left"); a generated image passes when it shows a shape of the reference's
  colour and kind at the text's cell.

References and cells are deterministic from ``opts.seed``; one reference per pipeline call (20 DPM-Solver++ steps
by default).
"""

from __future__ import annotations

import os
import time

import numpy as np

from canvas_jax.data import shapes
from canvas_jax.data.checker import check, detect
from canvas_jax.errors import InputError
from canvas_jax.eval.metrics import adherence_report
from canvas_jax.eval.sampling import SamplingOptions, to_uint8


def _sample(pipe, embedder, prompt: str, reference: np.ndarray, size: int, opts: SamplingOptions) -> np.ndarray:
    """One image from ``prompt`` + the reference as the loaded adapter reads it: the tower's embedding, or (Plus)
    its feature map tokens with the tokens of a zero input as the unconditional branch."""
    if pipe.unet.ip_adapter.plus:
        embeds = embedder.image_tokens(reference)
        extra = {"negative_ip_adapter_image_embeds": np.repeat(embedder.negative_image_tokens(), len(embeds), 0)}
    else:
        embeds, extra = embedder.embed_images(reference), {}
    out = pipe(prompt, height=size, width=size, num_steps=opts.num_steps, guidance_scale=opts.guidance_scale,
               sampler=opts.sampler, seed=opts.seed, output_type="np", ip_adapter_image_embeds=embeds, **extra).images
    return to_uint8(np.asarray(out))[0]


def image_variation(pipe, embedder, cfg: shapes.ShapesConfig, *, num_references: int = 64,
                    opts: SamplingOptions = SamplingOptions()) -> dict:
    """``variation_seen`` / ``variation_heldout``: checker adherence of "" + a reference to its caption."""
    t0 = time.perf_counter()
    refs = shapes.sample_prompts(num_references, cfg, seed=opts.seed)
    held = shapes.sample_prompts(num_references, cfg, heldout=True, seed=opts.seed) if cfg.holdout else []
    results = []
    for i, (caption, scene) in enumerate(refs + held):
        ref = shapes.render(scene, cfg.resolution, jitter_seed=[opts.seed, 31, i])
        image = _sample(pipe, embedder, "", ref, cfg.resolution, opts)
        results.append(bool(check(image, caption)))
    report = adherence_report(results, np.array([False] * len(refs) + [True] * len(held)))
    return {"variation_seen": report["adherence_seen"], "variation_heldout": report["adherence_held_out"],
            "n_seen": report["n_seen"], "n_heldout": report["n_held_out"],
            "seconds": round(time.perf_counter() - t0, 2)}


def composition_cases(n: int, cfg: shapes.ShapesConfig, seed: int = 0) -> list[tuple[shapes.ShapeSpec, str]]:
    """``n`` (reference shape, text position) pairs: a seen single shape and another cell."""
    rng = np.random.default_rng([seed, 41])
    pool = [scene.shapes[0] for _, scene in shapes.enumerate_prompts(cfg)]
    out = []
    for _ in range(n):
        spec = pool[int(rng.integers(len(pool)))]
        others = [p for p in shapes.POSITIONS if p != spec.position]
        out.append((spec, others[int(rng.integers(len(others)))]))
    return out


def composition(pipe, embedder, cfg: shapes.ShapesConfig, *, num_references: int = 64,
                opts: SamplingOptions = SamplingOptions()) -> dict:
    """``composition``: the fraction of images with the reference's colour and kind at the text's cell."""
    t0 = time.perf_counter()
    hits = []
    for i, (spec, position) in enumerate(composition_cases(num_references, cfg, opts.seed)):
        ref = shapes.render(shapes.Scene((spec,), cfg.backgrounds[0]), cfg.resolution, jitter_seed=[opts.seed, 43, i])
        image = _sample(pipe, embedder, f"at the {position}", ref, cfg.resolution, opts)
        hits.append(any(d.spec.position == position and d.spec.color == spec.color and d.spec.shape == spec.shape
                        for d in detect(image)))
    return {"composition": float(np.mean(hits)) if hits else 0.0, "n": len(hits),
            "seconds": round(time.perf_counter() - t0, 2)}


def evaluate_ip_adapter(pipe, embedder, cfg: shapes.ShapesConfig, *, num_references: int = 64,
                        opts: SamplingOptions = SamplingOptions()) -> dict:
    """Both evals on a pipeline with the adapter loaded (``pipe.load_ip_adapter(..., image_encoder_folder=None)``)."""
    return {"eval": "ip_adapter_shapes", "image_variation": image_variation(pipe, embedder, cfg,
                                                                            num_references=num_references, opts=opts),
            "composition": composition(pipe, embedder, cfg, num_references=num_references, opts=opts),
            "image_size": cfg.resolution, **opts.describe()}


def evaluate_ip_adapter_run(run_dir, *, num_references: int = 64,
                            opts: SamplingOptions = SamplingOptions()) -> dict:
    """Both evals of a ``task=ip_adapter`` run folder: its ``init_from`` pipeline with the run's adapter
    (``RUN_DIR/ip_adapter``) and the image encoder it was trained with, on the run's Shapes setup."""
    from canvas_jax.image_text import load_adapter_image_encoder
    from canvas_jax.pipeline import Pipeline
    from canvas_jax.runs import load_config

    cfg = load_config(run_dir)
    if cfg.task != "ip_adapter":
        raise InputError(f"{run_dir} is a task={cfg.task!r} run; expected a task=ip_adapter run")
    pipe = Pipeline.from_pretrained(cfg.init_from)
    folder = os.path.join(run_dir, "ip_adapter")
    pipe.load_ip_adapter(folder, image_encoder_folder=None)
    embedder = load_adapter_image_encoder(folder)
    scfg = shapes.ShapesConfig(resolution=cfg.data.image_size, **cfg.data.options)
    return {**evaluate_ip_adapter(pipe, embedder, scfg, num_references=num_references, opts=opts),
            "model": os.fspath(run_dir)}
