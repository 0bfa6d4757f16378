"""Calibrate the Shapes checker's minimum template fit (``canvas_jax.data.checker.MIN_FIT``) on true renders.

For each resolution and background, renders ``--scenes`` training-like scenes (one to three shapes), and prints one
JSON line with the lowest template fit per image (percentiles) and the fraction of images the checker accepts with
the fit test off (lenient) and at ``MIN_FIT`` (strict). The calibration target: >= 99.5% of true renders pass.

    python benchmarks/checker_calibration.py --resolutions 32,64 --scenes 2000
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from canvas_jax.data import shapes
from canvas_jax.data.checker import MIN_FIT, check


def calibrate(resolution: int, background: str, scenes: int, seed: int) -> dict:
    cfg = shapes.ShapesConfig(resolution=resolution, backgrounds=(background,))
    source = shapes.ShapesSource(cfg, num_examples=scenes, seed=seed, split="test")
    lowest, lenient, strict = [], 0, 0
    for i in range(scenes):
        example = source[i]
        result = check(example["image"], example["caption"], min_fit=0.0)
        lenient += bool(result)
        fits = [d.iou for d in result.detections]
        lowest.append(min(fits) if fits else 0.0)
        strict += bool(result) and lowest[-1] >= MIN_FIT
    q = np.percentile(lowest, [0, 0.5, 1, 5, 50])
    return {"resolution": resolution, "background": background, "scenes": scenes, "min_fit": MIN_FIT,
            "lowest_fit_min": round(float(q[0]), 4), "lowest_fit_p0.5": round(float(q[1]), 4),
            "lowest_fit_p1": round(float(q[2]), 4), "lowest_fit_p5": round(float(q[3]), 4),
            "lowest_fit_median": round(float(q[4]), 4), "pass_lenient": lenient / scenes,
            "pass_strict": strict / scenes}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="32,64")
    parser.add_argument("--backgrounds", default=",".join(shapes.BACKGROUNDS))
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args(argv)
    for resolution in (int(r) for r in args.resolutions.split(",")):
        for background in args.backgrounds.split(","):
            print(json.dumps(calibrate(resolution, background, args.scenes, args.seed)), flush=True)


if __name__ == "__main__":
    main()
