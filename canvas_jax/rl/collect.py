"""Collect preference data: sample candidates per prompt, score them, write pairs and review sheets.

``canvas-jax rl collect --model RUN --prompts prompts.txt --per-prompt 4 --reward checker --out DIR`` writes::

    DIR/images/PPPPP_CC.png     every candidate (prompt index, candidate index)
    DIR/sheets/PPPPP.png        one contact sheet per prompt: its candidates with their scores, for review
    DIR/candidates.jsonl        every candidate: prompt, file, seed, score and each reward's part
    DIR/pairs.jsonl             (prompt, chosen, rejected, both scores, both seeds, sampler settings) per pair
    DIR/data/<name>/1.0.0       the pairs as an ArrayRecord dataset (canvas_jax.data.preferences)

Candidate ``j`` of prompt ``i`` starts from the noise of seed ``seed + i * per_prompt + j``
(:func:`candidate_latents`), so ``pipe(prompt, latents=candidate_latents(pipe, [s]), **sampler settings)``
re-draws it. Pairs: every two candidates of a prompt whose scores differ by more than ``min_gap`` (``pairs="all"``)
or only its best and worst (``"best_worst"``); a prompt whose candidates all score alike gives none. With
``test_fraction`` the pairs of that fraction of the prompts go to the dataset's ``test`` split (held-out prompts,
e.g. for a reward model's held-out pair accuracy).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from canvas_jax.errors import InputError
from canvas_jax.rl.rewards import WeightedRewards

PAIRINGS = ("all", "best_worst")


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    per_prompt: int = 4
    sampler: str = "dpmpp_2m"
    num_steps: int = 20
    guidance_scale: float = 3.0
    eta: float = 0.0
    seed: int = 0
    batch_size: int = 64
    pairs: str = "all"
    min_gap: float = 0.0
    test_fraction: float = 0.0  # this fraction of the prompts (drawn with seed) gives test pairs, e.g. 0.1

    def __post_init__(self):
        if self.per_prompt < 2:
            raise InputError(f"per_prompt={self.per_prompt}: a pair needs at least 2 candidates per prompt")
        if self.pairs not in PAIRINGS:
            raise InputError(f"pairs={self.pairs!r}: expected one of {list(PAIRINGS)}")
        if self.batch_size < 1 or self.num_steps < 1 or self.min_gap < 0:
            raise InputError("batch_size and num_steps must be >= 1 and min_gap >= 0")
        if not 0.0 <= self.test_fraction < 1.0:
            raise InputError(f"test_fraction={self.test_fraction}: expected a fraction in [0, 1)")

    def sampler_settings(self) -> dict:
        return {"sampler": self.sampler, "num_steps": self.num_steps, "guidance_scale": self.guidance_scale,
                "eta": self.eta, "rng_seed": self.seed}


def candidate_latents(pipe, seeds: Sequence[int], height: int | None = None, width: int | None = None) -> np.ndarray:
    """NCHW unit-normal starting noise, one row per seed (``jax.random.normal(jax.random.key(seed), ...)``)."""
    h, w = height or pipe.default_size, width or pipe.default_size
    shape = (pipe.unet.config["out_channels"], h // pipe.vae_scale_factor, w // pipe.vae_scale_factor)
    return np.stack([np.asarray(jax.random.normal(jax.random.key(int(s)), shape)) for s in seeds])


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"prompts file {path} holds no prompt (expected one per line)")
    return prompts


def pair_indices(scores: np.ndarray, how: str = "all", min_gap: float = 0.0) -> list[tuple[int, int]]:
    """(chosen, rejected) candidate indices of one prompt's ``scores`` (see the module docstring)."""
    if how == "best_worst":
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        return [(best, worst)] if scores[best] - scores[worst] > min_gap else []
    out = []
    for a, b in itertools.combinations(range(len(scores)), 2):
        if abs(scores[a] - scores[b]) > min_gap:
            out.append((a, b) if scores[a] > scores[b] else (b, a))
    return out


def _sheet(images: list[np.ndarray], scores: np.ndarray, prompt: str, tile: int = 128) -> Image.Image:
    from canvas_jax.images import make_grid

    tiles = [Image.fromarray(im).resize((tile, tile), Image.Resampling.NEAREST) for im in images]
    return make_grid(tiles, cols=len(tiles), captions=[f"#{j} {s:.3f} {prompt}" for j, s in enumerate(scores)])


def collect(pipe, prompts: Sequence[str], reward: WeightedRewards, out_dir: str | os.PathLike,
            cfg: CollectConfig = CollectConfig(), *, model: str = "", build: bool = True) -> dict:
    """Sample, score and pair (see the module docstring); returns a summary (counts, mean reward per part, the
    dataset folder when built)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output folder {out} is not empty; choose a new one")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "sheets").mkdir(exist_ok=True)
    todo = [(i, j, cfg.seed + i * cfg.per_prompt + j) for i in range(len(prompts)) for j in range(cfg.per_prompt)]
    images = []
    for start in range(0, len(todo), cfg.batch_size):
        chunk = todo[start:start + cfg.batch_size]
        got = pipe([prompts[i] for i, _, _ in chunk], latents=candidate_latents(pipe, [s for *_, s in chunk]),
                   num_steps=cfg.num_steps, guidance_scale=cfg.guidance_scale, sampler=cfg.sampler, eta=cfg.eta,
                   seed=cfg.seed, output_type="np").images
        images.extend((np.clip(got, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    images = np.stack(images)
    total, parts = reward.scores(images, [prompts[i] for i, _, _ in todo])
    files = [f"images/{i:05d}_{j:02d}.png" for i, j, _ in todo]
    with open(out / "candidates.jsonl", "w", encoding="utf-8") as cand:
        for k, ((i, j, seed), file) in enumerate(zip(todo, files)):
            Image.fromarray(images[k]).save(out / file)
            cand.write(json.dumps({"prompt": prompts[i], "file": file, "seed": seed, "score": float(total[k]),
                                   **{name: float(v[k]) for name, v in parts.items()}}) + "\n")
    n_pairs, n_test = 0, round(cfg.test_fraction * len(prompts))
    test = set(np.random.default_rng([cfg.seed, 5]).permutation(len(prompts))[:n_test].tolist())
    with open(out / "pairs.jsonl", "w", encoding="utf-8") as pairs:
        for i, prompt in enumerate(prompts):
            rows = list(range(i * cfg.per_prompt, (i + 1) * cfg.per_prompt))
            _sheet([images[r] for r in rows], total[rows], prompt).save(out / "sheets" / f"{i:05d}.png")
            for a, b in pair_indices(total[rows], cfg.pairs, cfg.min_gap):
                ca, cb = rows[a], rows[b]
                pairs.write(json.dumps({"prompt": prompt, "chosen": files[ca], "rejected": files[cb],
                                        "chosen_score": float(total[ca]), "rejected_score": float(total[cb]),
                                        "chosen_seed": todo[ca][2], "rejected_seed": todo[cb][2],
                                        "sampler": cfg.sampler_settings(), "model": model,
                                        **({"split": "test"} if i in test else {})}) + "\n")
                n_pairs += 1
    summary = {"prompts": len(prompts), "candidates": len(todo), "pairs": n_pairs,
               "reward_mean": {"total": float(total.mean()), **{k: float(v.mean()) for k, v in parts.items()}},
               "out": str(out)}
    if build and n_pairs:
        from canvas_jax.data.preferences import build_preferences

        summary["dataset"], _ = build_preferences(out / "pairs.jsonl", out / "data", name="preferences",
                                                  verbose=False)
    return summary
