"""OpenMoji image-text retrieval (issue 12): ``canvas-jax eval clip`` of a ``task=clip`` run trained with
configs/canvas/clip_emoji.yaml, on the whole test split (emoji never trained on) as one gallery, plus what
reading it needs. Prints one JSON line per measurement:

- ``clip_emoji_eval``: caption->image / image->caption recall@1/@5 (a hit: the retrieved item's caption equals
  the query's), with the chance levels of this gallery (``chance_recall@5``: the probability that 5 random
  gallery items hold a positive, 5/N for distinct captions).
- ``clip_emoji_families``: the same embeddings, a hit being any item of the query's emoji *family* (the
  captions equal once skin-tone names are removed): half the test emoji are skin-tone variants that differ only
  in skin colour and in the tone words of the caption. Overall, and for queries with (``_toned``) / without
  (``_plain``) skin-tone variants in the gallery.
- ``clip_emoji_train_gallery``: exact-caption recall over as many *train* emoji (seen in training; not a test
  result), to show how much of the test gap is generalisation.

    python benchmarks/clip_emoji.py --run runs/clip_emoji

The latest checkpoint is read (the in-training eval runs on the test split, so "best" would select on it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from canvas_jax.data.loader import images_and_captions, open_split  # noqa: E402
from canvas_jax.data.openmoji import SKIN_TONES  # noqa: E402
from canvas_jax.eval.retrieval import evaluate_clip, evaluate_retrieval, retrieval_metrics, same_captions  # noqa: E402
from canvas_jax.image_text import load_image_text_model  # noqa: E402


def chance_recall(same: np.ndarray, k: int) -> float:
    """Mean over queries of P(k gallery items drawn at random hold one of the query's positives)."""
    n = same.shape[1]
    return float(np.mean([1.0 - math.comb(n - p, k) / math.comb(n, k) for p in same.sum(1)]))


def family(caption: str) -> str:
    """The caption without skin-tone names ("victory hand dark skin tone" -> "victory hand")."""
    for tone in sorted(SKIN_TONES.values(), key=len, reverse=True):
        caption = caption.replace(tone, "")
    return " ".join(caption.split())


def split_records(dataset: str, split: str, n: int | None = None) -> tuple[np.ndarray, list[str]]:
    source = open_split(dataset, split)
    return images_and_captions([source[i] for i in range(len(source) if n is None else min(n, len(source)))])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a task=clip run folder trained on an OpenMoji dataset")
    p.add_argument("--dataset", default=None, help="the dataset folder (default: the run's data.dataset)")
    args = p.parse_args(argv)
    clip = load_image_text_model(args.run, which="latest")
    dataset = args.dataset or clip.run_config.data.dataset

    images, captions = split_records(dataset, "test")
    if args.dataset is None:  # the CLI's eval, exactly (it reads the run's data.dataset)
        report = evaluate_clip(args.run, num_examples=len(captions), which="latest")
    else:
        report = {"eval": "clip", "dataset": dataset, "split": "test", **evaluate_retrieval(clip, images, captions)}
    same = same_captions(captions)
    report.update({f"chance_recall@{k}": chance_recall(same, k) for k in (1, 5)}, gallery=len(captions))
    print(json.dumps({"bench": "clip_emoji_eval", **report, "run_dir": args.run}), flush=True)

    fams = [family(c) for c in captions]
    fsame = same_captions(fams)
    toned = fsame.sum(1) > 1  # the query's family has other (skin-tone) members in the gallery
    metrics = retrieval_metrics(clip.embed_images(images), clip.embed_texts(captions), fsame, toned)
    out = {k.replace("_heldout", "_toned").replace("_seen", "_plain"): round(float(v), 4) for k, v in metrics.items()}
    print(json.dumps({"bench": "clip_emoji_families", **out, "gallery": len(captions),
                      "n_families": len(set(fams)), "n_toned": int(toned.sum()), "n_plain": int((~toned).sum()),
                      **{f"chance_recall@{k}": round(chance_recall(fsame, k), 4) for k in (1, 5)}}), flush=True)

    t_images, t_captions = split_records(dataset, "train", len(captions))
    train = evaluate_retrieval(clip, t_images, t_captions)
    print(json.dumps({"bench": "clip_emoji_train_gallery", "split": "train (seen in training)", **train,
                      "chance_recall@5": chance_recall(same_captions(t_captions), 5)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
