"""Shapes image-text retrieval (issue 12): train configs/canvas/clip_shapes.yaml (``task=clip``) for at most
``--max-minutes`` of training, then ``canvas-jax eval clip`` on 512 test scenes: caption->image and
image->caption recall@1/@5, overall, for scenes of seen (colour, shape) pairs and for scenes holding a held-out
pair (green triangle: never in training). Prints one JSON line per measurement. Target: caption->image
recall@1 >= 0.90.

Then a harder probe of the held-out pair: every single-shape scene (5 colours x 4 kinds x 2 sizes x 9 cells =
360, of which the 18 green triangles are held out) as one gallery, where a held-out caption has no other shape
to be recognised by and its nearest rivals differ in one attribute only.

    python benchmarks/clip_shapes.py --max-minutes 25 [--set key=value ...]
    python benchmarks/clip_shapes.py --eval-only out/bench/clip_shapes/clip_shapes   # a trained run

The run goes to ``--work-dir`` (default out/bench/clip_shapes) and starts afresh; ``--set`` overrides any
config key (e.g. ``data.dir=...`` to reuse a built Shapes dataset). The eval reads the latest checkpoint (no
checkpoint is picked on test data).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

from canvas_jax.config import CanvasTrainConfig  # noqa: E402
from canvas_jax.data import shapes  # noqa: E402
from canvas_jax.eval.retrieval import evaluate_clip, evaluate_retrieval  # noqa: E402
from canvas_jax.image_text import load_image_text_model  # noqa: E402
from canvas_jax.train.run import train  # noqa: E402
from core_jax import config as config_lib  # noqa: E402
from core_jax.loop import time_limit_hook  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "canvas", "clip_shapes.yaml")


def single_shape_probe(run_dir: str) -> dict:
    """Retrieval over all single-shape scenes of the run's Shapes setup (seen and held-out pairs)."""
    clip = load_image_text_model(run_dir, which="latest")
    d = clip.run_config.data
    cfg = shapes.ShapesConfig(resolution=d.image_size, **d.options)
    seen, held = shapes.enumerate_prompts(cfg), shapes.enumerate_prompts(cfg, heldout=True)
    captions = [c for c, _ in seen + held]
    images = [shapes.render(scene, cfg.resolution) for _, scene in seen + held]
    flags = [0] * len(seen) + [1] * len(held)
    return evaluate_retrieval(clip, images, captions, heldout=flags)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--work-dir", default=os.path.join("out", "bench", "clip_shapes"))
    p.add_argument("--max-minutes", type=float, default=25.0, help="wall cap on training (after compilation)")
    p.add_argument("--num-examples", type=int, default=512, help="test scenes in the retrieval gallery")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value config override")
    p.add_argument("--eval-only", default=None, help="a trained task=clip run folder: evaluate it, train nothing")
    args = p.parse_args(argv)
    if args.eval_only:
        report = evaluate_clip(args.eval_only, num_examples=args.num_examples, which="latest")
        print(json.dumps({"bench": "clip_shapes_eval", **report, "run_dir": args.eval_only}), flush=True)
        print(json.dumps({"bench": "clip_shapes_single_shapes", **single_shape_probe(args.eval_only)}), flush=True)
        return 0

    run_dir = os.path.join(args.work_dir, "clip_shapes")
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = config_lib.load(CanvasTrainConfig, args.config,
                          [f"train.run_dir={run_dir}", "train.progress=false", *args.overrides])
    limit = time_limit_hook(args.max_minutes * 60)
    t0 = time.perf_counter()
    state, last = train(cfg, extra_hooks=[limit])
    train_s = time.perf_counter() - t0
    steps = int(jax.device_get(state["step"]))
    print(json.dumps({"bench": "clip_shapes_train", "steps": steps, "planned_steps": cfg.train.steps,
                      "stopped_by_time_limit": limit.fn.stopped, "train_seconds": round(train_s, 1),
                      "batch_size": cfg.train.batch_size, "final_train_loss": last.get("loss"),
                      "examples_per_s_last": last.get("examples_per_s")}), flush=True)
    report = evaluate_clip(run_dir, num_examples=args.num_examples, which="latest")
    target = report["caption_to_image_recall@1"] >= 0.90
    print(json.dumps({"bench": "clip_shapes_eval", **report, "target_caption_to_image_recall@1": 0.90,
                      "target_met": bool(target), "run_dir": run_dir}), flush=True)
    print(json.dumps({"bench": "clip_shapes_single_shapes", **single_shape_probe(run_dir)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
