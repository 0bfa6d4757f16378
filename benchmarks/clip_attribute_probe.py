"""What a ``task=clip`` Shapes image tower encodes: linear probes from its features to each cell's (colour, shape,
size), on jittered renderings of random scenes (4,000 train / 1,000 test). Two feature sets: the L2-normalised
embedding (what the IP-Adapter is fed) and the tower's flattened, LayerNorm'd feature map before the
projection ("spatial"). Prints one JSON line per feature set: per-attribute accuracy over all (cell, scene) pairs
and over the occupied cells only (a cell holds a shape in ~23% of the pairs, so "empty" alone scores ~0.77).

    python benchmarks/clip_attribute_probe.py --run runs/clip_shapes   # needs the [probes] extra (scikit-learn)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from canvas_jax.data import shapes  # noqa: E402
from canvas_jax.image_text import load_image_text_model  # noqa: E402

ATTRS = ("color", "shape", "size")


def probe(x: np.ndarray, scenes, n_train: int) -> dict:
    cells = sorted({s.position for sc in scenes for s in sc.shapes})
    out = {}
    for attr in ATTRS:
        right = occupied_right = occupied = total = 0
        for cell in cells:
            y = np.array([next((getattr(s, attr) for s in sc.shapes if s.position == cell), "empty") for sc in scenes])
            pred = LogisticRegression(max_iter=2000, C=10.0).fit(x[:n_train], y[:n_train]).predict(x[n_train:])
            truth = y[n_train:]
            right += int((pred == truth).sum())
            total += len(truth)
            occ = truth != "empty"
            occupied_right += int((pred[occ] == truth[occ]).sum())
            occupied += int(occ.sum())
        out[f"{attr}_accuracy"] = round(right / total, 4)
        out[f"{attr}_accuracy_occupied"] = round(occupied_right / occupied, 4)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a task=clip run trained on Shapes")
    p.add_argument("--scenes", type=int, default=5000)
    p.add_argument("--train", type=int, default=4000)
    args = p.parse_args(argv)
    clip = load_image_text_model(args.run)
    cfg = shapes.ShapesConfig(resolution=clip.image_size)
    rng = np.random.default_rng(0)
    scenes = [shapes.sample_scene(rng, cfg) for _ in range(args.scenes)]
    images = np.stack([shapes.render(s, cfg.resolution, jitter_seed=[1, i]) for i, s in enumerate(scenes)])
    feats = {"embedding": clip.embed_images(images),
             "spatial": np.concatenate([np.asarray(clip.model.image_tower.features(
                 jnp.asarray(images[i:i + 500], jnp.float32) / 127.5 - 1.0)) for i in range(0, len(images), 500)])}
    for name, x in feats.items():
        print(json.dumps({"bench": "clip_attribute_probe", "features": name, "dim": int(x.shape[1]),
                          **probe(x, scenes, args.train), "scenes": args.scenes, "train": args.train,
                          "run": args.run}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
