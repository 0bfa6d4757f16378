"""OpenMoji text-to-image after one CPU hour (issue 12): train configs/canvas/emoji_tiny.yaml from scratch (its
VAE, then the UNet) within ``--max-minutes`` of wall time in all, then the MobileNetV2 Fréchet distance of
generated emoji to real ones. Prints one JSON line per stage.

All sets hold the same number of images N (= the test split, 440 emoji never trained on), since a Fréchet
distance shrinks with the sample size:

- ``fd_generated_test``: one emoji generated per **test** caption vs the test images (the number to report);
- ``fd_floor_test_train``: the test images vs N random train images (two real sets: the floor);
- ``fd_generated_train``: one emoji per caption of those N train images vs the same images (seen captions);
- ``fd_vae_test``: the VAE's reconstructions of the test images vs the test images (the VAE's ceiling).

    python benchmarks/emoji_fd.py --max-minutes 60 [--dataset out/canvas_data/openmoji_64/1.0.0] [--set k=v]
    python benchmarks/emoji_fd.py --eval-only out/bench/emoji_fd/emoji_tiny

The dataset is built first when the folder is missing (``canvas-jax data build --kind openmoji --size 64``; needs
the ``openmoji`` extra). The run goes to ``--work-dir`` (default out/bench/emoji_fd) and starts afresh.
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
from canvas_jax.config import CanvasTrainConfig  # noqa: E402
from canvas_jax.convert.mobilenet import load_mobilenet_v2  # noqa: E402
from canvas_jax.data.loader import images_and_captions, open_split  # noqa: E402
from canvas_jax.eval.frechet import frechet_distance_of_features  # noqa: E402
from canvas_jax.eval.sampling import SamplingOptions, generate  # noqa: E402
from canvas_jax.eval.shapes_eval import reconstructions  # noqa: E402
from canvas_jax.images import make_grid  # noqa: E402
from canvas_jax.models.mobilenet import embed_images  # noqa: E402
from canvas_jax.train.run import train, vae_pretrain_config  # noqa: E402
from core_jax import config as config_lib  # noqa: E402
from core_jax.loop import time_limit_hook  # noqa: E402
from PIL import Image  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "canvas", "emoji_tiny.yaml")


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def records(dataset: str, split: str, indices=None) -> tuple[np.ndarray, list[str]]:
    source = open_split(dataset, split)
    return images_and_captions([source[int(i)] for i in (range(len(source)) if indices is None else indices)])


def train_within(cfg: CanvasTrainConfig, minutes: float) -> dict:
    """The VAE pretraining (to its configured steps), then the UNet for what is left of ``minutes``."""
    t0 = time.perf_counter()
    train(vae_pretrain_config(cfg))
    vae_seconds = time.perf_counter() - t0
    left = minutes * 60 - vae_seconds
    if left <= 0:
        raise SystemExit(f"the VAE alone took {vae_seconds:.0f} s, over --max-minutes {minutes}: nothing left for "
                         "the UNet (lower vae.pretrain_steps or raise --max-minutes)")
    hook = time_limit_hook(left)
    state, last = train(cfg, extra_hooks=[hook])
    return {"vae_seconds": round(vae_seconds, 1), "unet_seconds": round(time.perf_counter() - t0 - vae_seconds, 1),
            "unet_steps": int(jax.device_get(state["step"])), "planned_unet_steps": cfg.train.steps,
            "stopped_by_time_limit": hook.fn.stopped, "loss": float(last.get("loss", float("nan")))}


def evaluate(run_dir: str, dataset: str, opts: SamplingOptions, work: str, seed: int = 0) -> dict:
    pipe = Pipeline.from_pretrained(run_dir)
    test, test_caps = records(dataset, "test")
    n = len(test)
    n_train = len(open_split(dataset, "train"))
    pick = np.sort(np.random.default_rng(seed).choice(n_train, size=n, replace=False))
    train_imgs, train_caps = records(dataset, "train", pick)
    t0 = time.perf_counter()
    gen_test = generate(pipe, test_caps, opts)
    gen_train = generate(pipe, train_caps, opts)
    gen_seconds = time.perf_counter() - t0
    recon = reconstructions(pipe.vae, test)
    make_grid([Image.fromarray(x) for pair in zip(test[:32], gen_test[:32]) for x in pair], cols=16,
              captions=[c for c in test_caps[:32] for _ in (0, 1)]).save(os.path.join(work, "emoji_test_grid.png"))
    net = load_mobilenet_v2(classifier=False)
    feats = {name: embed_images(net, x) for name, x in
             (("test", test), ("train", train_imgs), ("gen_test", gen_test), ("gen_train", gen_train), ("vae", recon))}

    def fd(a, b):
        return round(frechet_distance_of_features(feats[a], feats[b]), 2)

    return {"n_images": n, "fd_generated_test": fd("gen_test", "test"), "fd_floor_test_train": fd("test", "train"),
            "fd_generated_train": fd("gen_train", "train"), "fd_vae_test": fd("vae", "test"),
            "generate_seconds": round(gen_seconds, 1), **opts.describe(), "grid": os.path.join(work,
                                                                                           "emoji_test_grid.png")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--dataset", default=os.path.join("out", "canvas_data", "openmoji_64", "1.0.0"))
    p.add_argument("--work-dir", default=os.path.join("out", "bench", "emoji_fd"))
    p.add_argument("--max-minutes", type=float, default=60.0, help="wall cap on the VAE + UNet training")
    p.add_argument("--num-steps", type=int, default=20, help="DPM-Solver++ steps per image")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value config override")
    p.add_argument("--eval-only", default=None, help="a trained emoji_tiny run folder: evaluate it")
    args = p.parse_args(argv)
    opts = SamplingOptions(sampler="dpmpp_2m", num_steps=args.num_steps, guidance_scale=args.guidance_scale)
    os.makedirs(args.work_dir, exist_ok=True)
    if not os.path.isdir(args.dataset):
        from canvas_jax.data.openmoji import build_openmoji

        out_root = os.path.dirname(os.path.dirname(os.path.abspath(args.dataset)))
        args.dataset, report = build_openmoji(out_root, size=64)
        emit({"bench": "emoji_data", "dataset": args.dataset, "written": report.written, "skipped": report.skipped})
    run_dir = args.eval_only
    if run_dir is None:
        run_dir = os.path.join(args.work_dir, "emoji_tiny")
        vae_dir = os.path.join(args.work_dir, "emoji_tiny_vae")
        for d in (run_dir, vae_dir):
            shutil.rmtree(d, ignore_errors=True)
        over = [f"train.run_dir={run_dir}", f"vae.path={vae_dir}", f"data.dataset={args.dataset}",
                "train.progress=false"]
        cfg = config_lib.load(CanvasTrainConfig, args.config, over + args.overrides)
        emit({"bench": "emoji_fd_train", **train_within(cfg, args.max_minutes), "run_dir": run_dir})
    emit({"bench": "emoji_fd_eval", **evaluate(run_dir, args.dataset, opts, args.work_dir), "run_dir": run_dir,
          "dataset": args.dataset, "device": jax.devices()[0].device_kind})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
