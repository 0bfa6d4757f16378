"""IP-Adapter on Shapes (issue 12): train configs/canvas/ip_adapter_shapes.yaml (``task=ip_adapter`` on a trained
shapes_tiny run and a ``task=clip`` run) for at most ``--max-minutes``, then the two adherence evals of
:mod:`canvas_jax.eval.ip_adapter_eval`: image variation (empty prompt + a jittered reference -> the checker on
the reference's caption; targets >= 0.90 seen / >= 0.70 held-out over 64 + 64 references) and composition
(reference = one shape, text = a cell only; target >= 0.70). 20 DPM-Solver++ steps. Prints one JSON line each.

    python benchmarks/ip_adapter_shapes.py --max-minutes 60 [--init-from runs/shapes_tiny] \
        [--image-encoder runs/clip_shapes] [--set key=value ...]
    python benchmarks/ip_adapter_shapes.py --eval-only out/bench/ip_adapter_shapes/ip_adapter_shapes

The run goes to ``--work-dir`` (default out/bench/ip_adapter_shapes) and starts afresh.
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
from canvas_jax.eval.ip_adapter_eval import evaluate_ip_adapter_run  # noqa: E402
from canvas_jax.eval.sampling import SamplingOptions  # noqa: E402
from canvas_jax.train.run import train  # noqa: E402
from core_jax import config as config_lib  # noqa: E402
from core_jax.loop import time_limit_hook  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "canvas", "ip_adapter_shapes.yaml")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--work-dir", default=os.path.join("out", "bench", "ip_adapter_shapes"))
    p.add_argument("--init-from", default=None, help="the text-to-image run (default: the config's init_from)")
    p.add_argument("--image-encoder", default=None, help="the task=clip run (default: the config's)")
    p.add_argument("--max-minutes", type=float, default=60.0, help="wall cap on training")
    p.add_argument("--num-references", type=int, default=64, help="references per split / composition cases")
    p.add_argument("--num-steps", type=int, default=20, help="DPM-Solver++ steps per image")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value config override")
    p.add_argument("--eval-only", default=None, help="a trained task=ip_adapter run folder: evaluate it")
    args = p.parse_args(argv)
    opts = SamplingOptions(sampler="dpmpp_2m", num_steps=args.num_steps, guidance_scale=args.guidance_scale)
    run_dir = args.eval_only
    if run_dir is None:
        run_dir = os.path.join(args.work_dir, "ip_adapter_shapes")
        shutil.rmtree(run_dir, ignore_errors=True)
        over = [f"train.run_dir={run_dir}", "train.progress=false"]
        over += [f"init_from={args.init_from}"] if args.init_from else []
        over += [f"ip_adapter.image_encoder={args.image_encoder}"] if args.image_encoder else []
        cfg = config_lib.load(CanvasTrainConfig, args.config, over + args.overrides)
        t0 = time.perf_counter()
        state, last = train(cfg, extra_hooks=[time_limit_hook(args.max_minutes * 60)])
        print(json.dumps({"bench": "ip_adapter_shapes_train", "steps": int(jax.device_get(state["step"])),
                          "planned_steps": cfg.train.steps, "train_seconds": round(time.perf_counter() - t0, 1),
                          "loss": float(last.get("loss", float("nan"))), "run_dir": run_dir}), flush=True)
    report = evaluate_ip_adapter_run(run_dir, num_references=args.num_references, opts=opts)
    print(json.dumps({"bench": "ip_adapter_shapes_eval", **report, "run_dir": run_dir}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
