"""``make demo`` (canvas part): text-to-image from scratch on 2 CPU cores, on the procedural Shapes data.

Trains the small VAE and then the tiny text-to-image UNet (frozen pretrained MiniLM text encoder) with
``configs/canvas/shapes_tiny.yaml``, loads the run with ``Pipeline.from_pretrained``, samples seen and
held-out prompts (20 DPM-Solver++ steps) into ``out/canvas/samples.png`` (each tile captioned with the
checker's verdict: ok / NO, H = held-out prompt) and prints the prompt adherence as JSON.

    python -m canvas_jax.demo [--steps N] [--vae-steps N] [--num-prompts N] [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

OUT = "out/canvas"
CONFIG = "configs/canvas/shapes_tiny.yaml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m canvas_jax.demo", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000,
                   help="UNet training steps (default 1000, ~5 min on 2 cores; the config's full run is 2000)")
    p.add_argument("--vae-steps", type=int, default=800,
                   help="VAE training steps (default 800, ~7 min; the config's 2400 make sharper shapes)")
    p.add_argument("--num-prompts", type=int, default=16, help="seen and held-out prompts sampled (each)")
    p.add_argument("--resume", action="store_true", help="continue the runs in out/canvas instead of starting over")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=16")
    args = p.parse_args(argv)

    from canvas_jax.eval.sampling import SamplingOptions
    from canvas_jax.eval.shapes_eval import evaluate_shapes, shapes_config_for
    from canvas_jax.pipeline import Pipeline
    from canvas_jax.config import CanvasTrainConfig
    from canvas_jax.train.run import train
    from core_jax import config as config_lib

    run_dir, vae_dir = os.path.join(OUT, "shapes_tiny"), os.path.join(OUT, "shapes_tiny_vae")
    overrides = [f"train.run_dir={run_dir}", f"vae.path={vae_dir}", "data.dir=out/canvas_data"]
    overrides += [f"train.steps={args.steps}", f"vae.pretrain_steps={args.vae_steps}"]
    cfg = config_lib.load(CanvasTrainConfig, CONFIG, overrides + list(args.overrides))
    if not args.resume:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(vae_dir, ignore_errors=True)
    print(f"$ canvas-jax train --config {CONFIG} {' '.join(overrides + list(args.overrides))}", flush=True)
    train(cfg)

    pipe = Pipeline.from_pretrained(run_dir)
    grid = os.path.join(OUT, "samples.png")
    report = evaluate_shapes(pipe, shapes_config_for(run_dir, cfg.data.image_size), num_prompts=args.num_prompts,
                             opts=SamplingOptions(num_steps=20, guidance_scale=cfg.sampling.guidance_scale), grid=grid)
    print(f"\nsamples: {grid} (ok / NO = the Shapes checker's verdict, H = held-out prompt)")
    print(f"prompt adherence at 20 DPM-Solver++ steps: seen {report['adherence_seen']:.2f} "
          f"({report['n_seen']} prompts), held-out {report['adherence_heldout']:.2f} ({report['n_heldout']} prompts)")
    print(json.dumps({"run_dir": run_dir, **report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
