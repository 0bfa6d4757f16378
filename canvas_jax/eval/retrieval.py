"""Zero-shot retrieval with an image-text embedding model: caption->image and image->caption recall@k.

Recall@k is the fraction of queries with a correct item among their k most similar gallery items. The
gallery is the eval set itself (N images and their N captions). A retrieved item is correct when its caption
*equals* the query's: on Shapes several scenes can share one caption (and then render identically), so a
caption query is answered correctly by any image with that caption, and an image query by any copy of its
caption. This is never easier than one item per caption would make it for a distinct caption, and it does not
punish the model for a tie it cannot break. Reported separately for queries whose scene holds a held-out
(colour, shape) pair (``_heldout``) and for the rest (``_seen``) when the data flags them.

The eval set is the dataset's test split (never training data): ``evaluate_clip`` reads its first N records
(for Shapes, test scenes drawn as the built test split draws them, so any N is available).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from canvas_jax.errors import InputError

KS = (1, 5)


def recall_at_k(scores, positives, ks: Sequence[int] = KS, query_mask=None) -> dict[int, jax.Array]:
    """``{k: fraction of queries whose top-k gallery items hold a positive}`` from ``scores`` [Q, G] (higher is
    closer) and ``positives`` [Q, G] bool; only the queries ``query_mask`` [Q] keeps when given (0 if none)."""
    scores, positives = jnp.asarray(scores, jnp.float32), jnp.asarray(positives, bool)
    if scores.ndim != 2 or scores.shape != positives.shape:
        raise InputError(f"recall_at_k: expected scores and positives of one shape [queries, gallery], got "
                         f"{scores.shape} and {positives.shape}")
    if not ks or min(ks) < 1:
        raise InputError(f"recall_at_k: ks={list(ks)}; expected positive cut-offs such as (1, 5)")
    g = scores.shape[1]
    _, top = jax.lax.top_k(scores, min(max(ks), g))
    found = jnp.cumsum(jnp.take_along_axis(positives, top, axis=1), axis=1) > 0  # [Q, k]: a positive in top-j
    mask = jnp.ones(scores.shape[0], jnp.float32) if query_mask is None else jnp.asarray(query_mask, jnp.float32)
    return {k: jnp.sum(found[:, min(k, g) - 1] * mask) / jnp.maximum(jnp.sum(mask), 1.0) for k in ks}


def retrieval_metrics(image_emb, text_emb, same, heldout=None, ks: Sequence[int] = KS) -> dict[str, jax.Array]:
    """Recall@k both ways for N (image, caption) pairs: ``image_emb`` / ``text_emb`` [N, D] (L2-normalised),
    ``same`` [N, N] bool (caption i equals caption j), ``heldout`` [N] (the pair holds a held-out combination)
    adds ``_seen`` / ``_heldout`` versions. Works on numpy and inside ``jit``."""
    sim = jnp.asarray(image_emb, jnp.float32) @ jnp.asarray(text_emb, jnp.float32).T  # [image, caption]
    same = jnp.asarray(same, bool)
    groups = {"": None}
    if heldout is not None:
        h = jnp.asarray(heldout).astype(bool)
        groups.update({"_seen": ~h, "_heldout": h})
    out = {}
    for suffix, mask in groups.items():
        for k, v in recall_at_k(sim.T, same, ks, mask).items():  # caption queries over the images
            out[f"caption_to_image_recall@{k}{suffix}"] = v
        for k, v in recall_at_k(sim, same, ks, mask).items():  # image queries over the captions
            out[f"image_to_caption_recall@{k}{suffix}"] = v
    return out


def same_captions(captions: Sequence[str]) -> np.ndarray:
    """[N, N] bool: caption i equals caption j."""
    _, ids = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    return ids[:, None] == ids[None, :]


def evaluate_retrieval(embedder, images: np.ndarray, captions: Sequence[str], heldout=None) -> dict:
    """Retrieval report of ``embedder`` (``embed_images`` / ``embed_texts``, e.g.
    :class:`~canvas_jax.image_text.ImageTextEmbedder`) on uint8 ``images`` [N, H, W, 3] and their ``captions``."""
    if len(images) != len(captions):
        raise InputError(f"evaluate_retrieval: {len(images)} images but {len(captions)} captions")
    if len(images) < 2:
        raise InputError(f"evaluate_retrieval: {len(images)} pairs; a gallery needs at least 2")
    same = same_captions(captions)
    metrics = retrieval_metrics(embedder.embed_images(images), embedder.embed_texts(list(captions)), same, heldout)
    report = {k: float(v) for k, v in metrics.items()}
    report.update({"n": len(captions), "n_distinct_captions": int(len(np.unique(np.asarray(captions, dtype=str)))),
                   "chance_recall@1": float(np.mean(same.sum(1) / len(captions)))})
    if heldout is not None:
        report.update(n_heldout=int(np.sum(heldout)), n_seen=int(len(captions) - np.sum(heldout)))
    return report


def test_records(cfg, num_examples: int) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """The first ``num_examples`` test records of a run config's dataset: (uint8 images, captions, held-out flags
    or None). Shapes: test scenes from the run's ``data.options``; a folder: its ``test`` split."""
    from canvas_jax.data.loader import images_and_captions, open_split
    from canvas_jax.data.shapes import ShapesConfig, ShapesSource

    if num_examples < 2:
        raise InputError(f"number of eval examples must be >= 2, got {num_examples}")
    d = cfg.data
    if d.dataset == "shapes":
        source = ShapesSource(ShapesConfig(resolution=d.image_size, **d.options), num_examples=num_examples,
                              split="test")
    else:
        source = open_split(d.dataset, "test")
        if len(source) < num_examples:
            raise InputError(f"dataset {d.dataset} has {len(source)} test records; asked for {num_examples}")
    records = [source[i] for i in range(num_examples)]
    images, captions = images_and_captions(records)
    heldout = np.array([int(r["heldout"]) for r in records]) if all("heldout" in r for r in records) else None
    return images, captions, heldout


def evaluate_clip(run_dir: str | os.PathLike, *, num_examples: int = 512, which: str = "auto",
                  batch_size: int = 256) -> dict:
    """``canvas-jax eval clip``: the retrieval report of a ``task=clip`` run on its dataset's test split."""
    from canvas_jax.image_text import load_image_text_model

    t0 = time.perf_counter()
    embedder = load_image_text_model(run_dir, which=which, batch_size=batch_size)
    cfg = embedder.run_config
    images, captions, heldout = test_records(cfg, num_examples)
    report = evaluate_retrieval(embedder, images, captions, heldout)
    return {"eval": "clip", "dataset": cfg.data.dataset, "split": "test", "step": embedder.step, **report,
            "logit_scale": float(embedder.model.logit_scale()), "seconds": round(time.perf_counter() - t0, 2)}
