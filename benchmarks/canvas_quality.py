"""canvas_jax quality: one JSON line per measurement. Each piece runs on its own:

(a) ``--shapes`` (the default): train configs/canvas/shapes_tiny.yaml (its VAE first, when the work folder
    holds none) for at most ``--max-minutes`` of UNet training, then Shapes prompt adherence on seen and
    held-out prompts at 20 DPM-Solver++ steps (``canvas-jax eval shapes``).
(b) ``--sampler-compare [RUN]``: one checkpoint (default: the run of (a)), DPM-Solver++ 20 steps against
    DDIM 250 steps from the same starting noise: adherence of each and their mean absolute pixel difference.
(c) ``--inpaint RUN``: ``canvas-jax eval inpaint`` with shape masks and with random masks.
(d) ``--cifar10``: extract the CIFAR-10 archives in ``--data-root``, build the dataset, train
    configs/canvas/cifar10.yaml for ``--max-minutes``, then ``canvas-jax eval cifar10`` (classifier accuracy,
    classifier Fréchet distance, the classifier's own test accuracy).

    python benchmarks/canvas_quality.py --max-minutes 10
    python benchmarks/canvas_quality.py --sampler-compare runs/shapes_tiny
    python benchmarks/canvas_quality.py --inpaint runs/inpaint_shapes
    python benchmarks/canvas_quality.py --cifar10 --max-minutes 30 --per-class 100

Runs go to ``--work-dir`` (default out/bench/canvas_quality); a training run starts afresh each time (its VAE
is kept: ``--fresh`` removes it too). ``--steps`` sets ``train.steps`` (the learning-rate schedule's length);
``--max-minutes`` stops earlier, with a checkpoint. ``--set key=value`` overrides any config key.
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
import numpy as np  # noqa: E402

from canvas_jax import Pipeline  # noqa: E402
from canvas_jax.eval.cifar10 import evaluate_cifar10  # noqa: E402
from canvas_jax.eval.class_folders import resolve_root  # noqa: E402
from canvas_jax.eval.inpaint_eval import evaluate_inpaint  # noqa: E402
from canvas_jax.eval.sampling import SamplingOptions  # noqa: E402
from canvas_jax.eval.shapes_eval import adherence, evaluate_shapes, generate_shapes, shapes_config_for  # noqa: E402
from canvas_jax.config import CanvasTrainConfig  # noqa: E402
from canvas_jax.train.run import train  # noqa: E402
from core_jax import config as config_lib  # noqa: E402
from core_jax.loop import time_limit_hook  # noqa: E402

CONFIGS = {"shapes": os.path.join(ROOT, "configs", "canvas", "shapes_tiny.yaml"),
           "cifar10": os.path.join(ROOT, "configs", "canvas", "cifar10.yaml")}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def train_for(name: str, work: str, args, extra: list[str]) -> tuple[str, dict]:
    """Train config ``name`` into ``work/name`` (VAE in ``work/name_vae``); returns (run folder, summary)."""
    run_dir, vae_dir = os.path.join(work, name), os.path.join(work, f"{name}_vae")
    shutil.rmtree(run_dir, ignore_errors=True)
    if args.fresh:
        shutil.rmtree(vae_dir, ignore_errors=True)
    overrides = [f"train.run_dir={run_dir}", f"vae.path={vae_dir}", "train.progress=false", *extra, *args.set]
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    cfg = config_lib.load(CanvasTrainConfig, CONFIGS[name], overrides)
    hooks = [time_limit_hook(args.max_minutes * 60)] if args.max_minutes else []
    t0 = time.perf_counter()
    state, metrics = train(cfg, extra_hooks=hooks)
    summary = {"train_steps": int(jax.device_get(state["step"])), "planned_steps": cfg.train.steps,
               "train_seconds": round(time.perf_counter() - t0, 1), "stopped_by_time_limit": any(h.fn.stopped for h in hooks),
               "train_loss": metrics.get("loss"), "eval_loss": metrics.get("eval_loss"), "run_dir": run_dir}
    return run_dir, summary


def bench_shapes(args, work: str) -> str:
    run_dir, summary = train_for("shapes", work, args, [])
    pipe = Pipeline.from_pretrained(run_dir)
    cfg = shapes_config_for(run_dir, pipe.default_size)
    opts = SamplingOptions(sampler="dpmpp_2m", num_steps=20, guidance_scale=args.guidance_scale, seed=args.seed,
                           batch_size=args.batch_size)
    report = evaluate_shapes(pipe, cfg, num_prompts=args.num_prompts, opts=opts,
                             grid=os.path.join(work, "shapes_grid.png"))
    emit({"bench": "shapes", **summary, **report, "device": jax.devices()[0].device_kind})
    return run_dir


def bench_sampler_compare(args, run_dir: str) -> None:
    pipe = Pipeline.from_pretrained(run_dir)
    cfg = shapes_config_for(run_dir, pipe.default_size)
    out, images = {}, {}
    for sampler, steps in (("dpmpp_2m", 20), ("ddim", 250)):
        opts = SamplingOptions(sampler=sampler, num_steps=steps, guidance_scale=args.guidance_scale, seed=args.seed,
                               batch_size=args.batch_size)
        t0 = time.perf_counter()
        samples = generate_shapes(pipe, cfg, num_prompts=args.num_prompts, opts=opts)
        report, _ = adherence(samples)
        images[sampler] = samples.images.astype(np.float32) / 255.0
        out[f"{sampler}_{steps}"] = {**report, "seconds": round(time.perf_counter() - t0, 2)}
    diff = float(np.abs(images["dpmpp_2m"] - images["ddim"]).mean())
    emit({"bench": "sampler_compare", "model": run_dir, **out, "mean_abs_pixel_diff": diff,
          "guidance_scale": args.guidance_scale, "seed": args.seed, "device": jax.devices()[0].device_kind})


def bench_inpaint(args, run_dir: str) -> None:
    pipe = Pipeline.from_pretrained(run_dir)
    cfg = shapes_config_for(run_dir, pipe.default_size)
    opts = SamplingOptions(sampler="dpmpp_2m", num_steps=20, guidance_scale=args.guidance_scale, seed=args.seed,
                           batch_size=args.batch_size)
    for masks in ("shape", "random"):
        report = evaluate_inpaint(pipe, cfg, num_images=args.num_prompts, masks=masks, opts=opts)
        emit({"bench": "inpaint", "model": run_dir, **report, "device": jax.devices()[0].device_kind})


def cifar10_dataset(args, work: str) -> str:
    """The CIFAR-10 ArrayRecord dataset under ``work`` (built from ``--data-root`` once)."""
    from canvas_jax.data.ingest import build_image_folder

    built = os.path.join(work, "canvas_data", "cifar10", "1.0.0")
    if not os.path.isfile(os.path.join(built, "dataset_info.json")):
        src = resolve_root(args.data_root, os.path.join(work, "cifar10_src"))
        built, _ = build_image_folder({"train": src / "train", "test": src / "test"},
                                      os.path.join(work, "canvas_data"), name="cifar10", size=32, overwrite=True)
    return built


def bench_cifar10(args, work: str) -> None:
    if not os.path.isdir(args.data_root):
        raise SystemExit(f"canvas_quality: --data-root {args.data_root} does not exist; expected the CIFAR-10 "
                         "archives cifar10-jpg-train.tar.gz and cifar10-jpg-test.tar.gz (or train/ test/ folders)")
    dataset = cifar10_dataset(args, work)
    run_dir, summary = train_for("cifar10", work, args, [f"data.dataset={dataset}"])
    pipe = Pipeline.from_pretrained(run_dir)
    opts = SamplingOptions(sampler="dpmpp_2m", num_steps=20, guidance_scale=args.guidance_scale, seed=args.seed,
                           batch_size=args.batch_size)
    report = evaluate_cifar10(pipe, dataset, os.path.join(work, "cifar10_classifier.safetensors"),
                              per_class=args.per_class, opts=opts)
    emit({"bench": "cifar10", **summary, **report, "device": jax.devices()[0].device_kind})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", action="store_true", help="(a) train shapes_tiny, then Shapes adherence")
    p.add_argument("--sampler-compare", nargs="?", const="", default=None, metavar="RUN",
                   help="(b) DPM-Solver++ 20 vs DDIM 250 steps on RUN (default: the run of --shapes)")
    p.add_argument("--inpaint", default=None, metavar="RUN", help="(c) inpainting metrics of RUN")
    p.add_argument("--cifar10", action="store_true", help="(d) train cifar10.yaml, then the CIFAR-10 eval")
    p.add_argument("--max-minutes", type=float, default=0.0, help="cap on UNet training time (0: none)")
    p.add_argument("--steps", type=int, default=0, help="train.steps (0: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeat)")
    p.add_argument("--work-dir", default=os.path.join(ROOT, "out", "bench", "canvas_quality"))
    p.add_argument("--fresh", action="store_true", help="also retrain the VAE")
    p.add_argument("--num-prompts", type=int, default=64, help="prompts of each kind (seen, held-out); inpaint images")
    p.add_argument("--per-class", type=int, default=100, help="CIFAR-10 images generated per class")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "images"))
    args = p.parse_args(argv)
    if not (args.shapes or args.sampler_compare is not None or args.inpaint or args.cifar10):
        args.shapes = True
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    shapes_run = os.path.join(work, "shapes")
    if args.shapes:
        shapes_run = bench_shapes(args, work)
    if args.sampler_compare is not None:
        bench_sampler_compare(args, args.sampler_compare or shapes_run)
    if args.inpaint:
        bench_inpaint(args, args.inpaint)
    if args.cifar10:
        bench_cifar10(args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
