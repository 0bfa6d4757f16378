"""``make demo`` (canvas part): text-to-image from scratch on 2 CPU cores, on the procedural Shapes data.

Trains the small VAE and then the tiny text-to-image UNet (frozen pretrained MiniLM text encoder) with
``configs/canvas/shapes_tiny.yaml``, loads the run with ``Pipeline.from_pretrained``, samples seen and
held-out prompts (20 DPM-Solver++ steps) into ``out/canvas/samples.png`` (each tile captioned with the
checker's verdict: ok / NO, H = held-out prompt) and prints the prompt adherence as JSON.

Before anything trains, a preflight checks that the run will find its text encoder, data and VAE. What a
previous call finished is reused (the VAE, the UNet, the whole report); ``--fresh`` starts over.
``DEMO_SMOKE=1`` trains a few steps only, under ``out/smoke/`` (``core_jax.demo_runs``).

    python -m canvas_jax.demo [--steps N] [--vae-steps N] [--num-prompts N] [--fresh] [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from core_jax import config as config_lib
from core_jax import demo_runs

CONFIG = "configs/canvas/shapes_tiny.yaml"
# DEMO_SMOKE: every path of the demo, a few steps each, on 64 images; a two-level UNet (compiling the config's
# three levels takes most of the smoke's time on 2 cores)
SMOKE = {"steps": 2, "vae_steps": 2, "num_prompts": 2, "sample_steps": 2,
         "overrides": ["data.num_examples=64", "train.batch_size=4", "train.eval_batches=1", "sampling.every=0",
                       "sampling.num_prompts=2", "sampling.num_steps=2", "unet.block_out_channels=[32,64]",
                       "unet.down_block_types=[DownBlock2D,CrossAttnDownBlock2D]",
                       "unet.up_block_types=[CrossAttnUpBlock2D,UpBlock2D]"]}
FULL = {"steps": 1000, "vae_steps": 800, "num_prompts": 16, "sample_steps": 20, "overrides": []}


@config_lib.exit_on_error  # a bad override or a failed preflight: one line, exit code 2
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m canvas_jax.demo", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None,
                   help="UNet training steps (default 1000; the config's full run is 2000)")
    p.add_argument("--vae-steps", type=int, default=None,
                   help="VAE training steps (default 800; the config's 2400 make sharper shapes)")
    p.add_argument("--num-prompts", type=int, default=None, help="seen and held-out prompts sampled (each; default 16)")
    p.add_argument("--fresh", action="store_true", help="delete what a previous call trained in out/canvas and start "
                                                        "over (default: reuse it)")
    p.add_argument("--check", action="store_true", help="only run the preflight (text encoder, data, VAE) and exit")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=16")
    args = p.parse_args(argv)
    size = SMOKE if demo_runs.smoke() else FULL
    steps = size["steps"] if args.steps is None else args.steps
    vae_steps = size["vae_steps"] if args.vae_steps is None else args.vae_steps
    num_prompts = size["num_prompts"] if args.num_prompts is None else args.num_prompts

    from canvas_jax.config import CanvasTrainConfig
    from canvas_jax.train.preflight import check

    out = demo_runs.out_dir("canvas")
    run_dir, vae_dir = os.path.join(out, "shapes_tiny"), os.path.join(out, "shapes_tiny_vae")
    overrides = [f"train.run_dir={run_dir}", f"vae.path={vae_dir}", f"data.dir={demo_runs.out_dir('canvas_data')}",
                 f"train.steps={steps}", f"vae.pretrain_steps={vae_steps}", *size["overrides"], *args.overrides]
    if args.check:
        check(config_lib.load(CanvasTrainConfig, CONFIG, overrides))
        print(f"canvas demo preflight: ok ({CONFIG}: text encoder, data and VAE sources found)")
        return 0
    trained = {"steps": steps, "vae_steps": vae_steps, "overrides": overrides}
    part = demo_runs.Part("canvas", [out], {**trained, "num_prompts": num_prompts,
                                            "sample_steps": size["sample_steps"]}, fresh=args.fresh)
    summary = part.reused()
    if summary is None:
        cfg = config_lib.load(CanvasTrainConfig, CONFIG, overrides)
        check(cfg)  # the text encoder, data and VAE are there: before the first training step, not after the VAE's
        saved = part.saved_settings
        if saved and {k: saved.get(k) for k in trained} != trained and os.path.isdir(run_dir):
            print(f"[demo canvas] the UNet in {run_dir} was trained with other settings: training it again "
                  f"(the VAE is reused; {demo_runs.FRESH_HINT})", flush=True)
            shutil.rmtree(run_dir)
        _train(cfg, overrides, part)
        summary = _sample(cfg, out, num_prompts, size["sample_steps"], part)
        part.finish(summary)
    print(f"\nsamples: {summary['grid']} (ok / NO = the Shapes checker's verdict, H = held-out prompt)")
    print(f"prompt adherence at {summary['sample_steps']} DPM-Solver++ steps: seen {summary['adherence_seen']:.2f} "
          f"({summary['n_seen']} prompts), held-out {summary['adherence_heldout']:.2f} ({summary['n_heldout']} prompts)")
    print(json.dumps(summary))
    return 0


def _train(cfg, overrides: list[str], part: demo_runs.Part) -> None:
    """Train the UNet (and the VAE first) unless a previous call finished them; records the laps."""
    from canvas_jax.train.run import train

    run_dir, vae_dir, hint = cfg.train.run_dir, cfg.vae.path, demo_runs.FRESH_HINT
    unet_step = demo_runs.checkpoint_step(run_dir)
    if unet_step is not None and unet_step >= cfg.train.steps:
        print(f"[demo canvas] reusing the UNet trained in {run_dir} (step {unet_step}); {hint}", flush=True)
        return
    vae_step = demo_runs.checkpoint_step(vae_dir)
    vae_done = vae_step is not None and vae_step >= cfg.vae.pretrain_steps
    if vae_done:
        print(f"[demo canvas] reusing the VAE trained in {vae_dir} (step {vae_step}); {hint}", flush=True)
    if unet_step:
        print(f"[demo canvas] continuing the UNet in {run_dir} from step {unet_step}", flush=True)
    print(f"$ canvas-jax train --config {CONFIG} {' '.join(overrides)}", flush=True)
    start = time.time()
    train(cfg)
    unet_config = os.path.join(run_dir, "config.yaml")  # written when the UNet's training starts
    if not vae_done and os.path.isfile(unet_config):
        part.lap("VAE pretraining", max(os.path.getmtime(unet_config) - start, 0.0))
    part.lap("UNet training")


def _sample(cfg, out: str, num_prompts: int, sample_steps: int, part: demo_runs.Part) -> dict:
    from canvas_jax.eval.sampling import SamplingOptions
    from canvas_jax.eval.shapes_eval import evaluate_shapes, shapes_config_for
    from canvas_jax.pipeline import Pipeline

    run_dir = cfg.train.run_dir
    pipe = Pipeline.from_pretrained(run_dir)
    grid = os.path.join(out, "samples.png")
    report = evaluate_shapes(pipe, shapes_config_for(run_dir, cfg.data.image_size), num_prompts=num_prompts,
                             opts=SamplingOptions(num_steps=sample_steps, guidance_scale=cfg.sampling.guidance_scale),
                             grid=grid)
    part.lap("sampling and checking")
    return {"run_dir": run_dir, "grid": grid, "sample_steps": sample_steps, **report}


if __name__ == "__main__":
    raise SystemExit(main())
