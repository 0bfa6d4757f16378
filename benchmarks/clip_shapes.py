"""Shapes image-text retrieval (issue 12): train configs/canvas/clip_shapes.yaml (``task=clip``) for at most
``--max-minutes`` of training, then ``canvas-jax eval clip`` on 512 test scenes: caption->image and
image->caption recall@1/@5, overall, for scenes of seen (colour, shape) pairs and for scenes holding a held-out
pair (green triangle: never in training). Prints one JSON line per measurement. Target: caption->image
recall@1 >= 0.90.

    python benchmarks/clip_shapes.py --max-minutes 25 [--set key=value ...]

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
from canvas_jax.eval.retrieval import evaluate_clip  # noqa: E402
from canvas_jax.train.run import train  # noqa: E402
from core_jax import config as config_lib  # noqa: E402
from core_jax.loop import time_limit_hook  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "canvas", "clip_shapes.yaml")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--work-dir", default=os.path.join("out", "bench", "clip_shapes"))
    p.add_argument("--max-minutes", type=float, default=25.0, help="wall cap on training (after compilation)")
    p.add_argument("--num-examples", type=int, default=512, help="test scenes in the retrieval gallery")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value config override")
    args = p.parse_args(argv)

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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
