"""The GPU suite's rows (issue 17, section 4): one JSON line per row; run by ``benchmarks/gpu_suite.sh``.

    python benchmarks/gpu_suite.py --row train_sd15_b8 [--dry-run] [--out FILE]
    python benchmarks/gpu_suite.py --list

Rows (each a function below; the shell script runs each in its own process under a time limit):

- ``sampling_sd15``: SD-1.5-size pipeline (random weights, ``canvas_sampling.CONFIGS['sd15']``) at 512 px, 25
  DPM++ 2M steps, CFG 7.5, batch 1: seconds per image, ours in bfloat16 against diffusers in float16 on the
  same GPU in the same run (diffusers runs in a child process, so torch's CUDA libraries never share a
  process with JAX's; without a CUDA torch its side says "reference: not installed");
- ``train_sd15_b8``, ``train_sd15_b32``: SD-1.5-size UNet training step (``canvas_train_speed.ours_sd15``)
  in bfloat16 at 64x64 latents (512 px): images/s and MFU = XLA's cost-analysis FLOPs per step / step time /
  the GPU's dense bf16 peak;
- ``train_sdxl_b1``: SDXL-size UNet training step, bfloat16, 128x128 latents (1024 px), batch 1: step time;
- ``hstu_ml20m``: HSTU on generative-recommenders' ML-20M config (D=256, 4 blocks, 4 heads, dqk=dv=64, L=200,
  batch 128, 128 negatives): training sequences/s and tokens/s (real positions) through the step
  ``recsys-jax train`` compiles (``benchmarks/reference/hstu_train_step.py``), on synthetic sequences with
  ML-20M's item count;
- ``topk_10m``: exact top-100 over 10M x 64 bfloat16 items, 256 queries: QPS (``benchmarks/recsys_topk.py``).

``--dry-run`` (or ``GPU_SUITE_DRY_RUN=1``): tiny sizes, every row's code path on whatever device is there
(CPU in ``make test``), in seconds. Every row records the device kind, dtype and sizes; a row that fails
prints ``{"row": ..., "error": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [ROOT, HERE, os.path.join(HERE, "reference")]

# dense bf16 tensor-core peak (SXM parts, no sparsity): H100 and H200 share the same compute die
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}
PROMPT = "a cozy reading nook"
SDXL_UNET = dict(  # Stable Diffusion XL base's UNet (2.6B parameters)
    block_out_channels=[320, 640, 1280], layers_per_block=2, transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20], cross_attention_dim=2048, use_linear_projection=True,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    sample_size=128)
TINY_UNET = dict(block_out_channels=[32], layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
                 attention_head_dim=4, down_block_types=["CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D"], sample_size=8)
TINY_SDXL_UNET = {**TINY_UNET, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                  "projection_class_embeddings_input_dim": 32 + 6 * 8, "use_linear_projection": True}
# dry run: XLA compiles without LLVM optimisations (compiling is most of a tiny run; as `make demo-smoke`)
DRY_RUN_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# generative-recommenders configs/ml-20m/hstu-sampled-softmax-n128-final.gin; ML-20M has 26,744 rated movies
ML20M = ["model.hstu.embed_dim=256", "model.hstu.num_layers=4", "model.hstu.num_heads=4",
         "model.hstu.attention_dim=64", "model.hstu.linear_dim=64", "model.hstu.max_seq_len=200",
         "model.hstu.dropout=0.2", "data.build.format=synthetic", "data.build.input=null",
         "data.build.synthetic.num_users=3000", "data.build.synthetic.num_items=26744",
         "data.build.synthetic.min_len=210", "data.build.synthetic.max_len=400"]


def device_kind() -> str:
    import jax

    return jax.devices()[0].device_kind


def peak_flops(kind: str) -> float | None:
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in kind), None)


def _common(dry: bool) -> dict:
    import jax

    return {"device": device_kind(), "platform": jax.devices()[0].platform, "jax": jax.__version__,
            "dry_run": dry}


# ------------------------------------------------------------------------------------------- canvas
def _reference_sampling(folder: str, steps: int, size: int, repeats: int) -> dict:
    """Child process: diffusers samples from ``folder`` (float16 on CUDA; float32 on CPU in a dry run)."""
    import diffusers
    import numpy as np
    import torch

    if torch.cuda.is_available():
        device, dtype = "cuda", torch.float16
    elif os.environ.get("GPU_SUITE_DRY_RUN") == "1":
        device, dtype = "cpu", torch.float32
    else:
        return {"reference": f"not installed (torch {torch.__version__} has no CUDA)"}
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    torch.set_grad_enabled(False)
    latents = torch.from_numpy(np.load(os.path.join(os.path.dirname(folder), "latents.npy"))).to(device, dtype)
    kw = dict(num_inference_steps=steps, guidance_scale=7.5, height=size, width=size, output_type="np")
    pipe(PROMPT, latents=latents, **kw)  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        pipe(PROMPT, latents=latents, **kw)
        times.append(time.perf_counter() - t)
    return {"diffusers_s_per_image": round(min(times), 4), "diffusers_dtype": str(dtype).removeprefix("torch."),
            "diffusers_device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__, "diffusers": diffusers.__version__}


def sampling_sd15(dry: bool) -> dict:
    import jax.numpy as jnp
    import numpy as np

    import canvas_jax
    from canvas_sampling import CONFIGS

    name, size, steps, repeats = ("tiny", 32, 3, 1) if dry else ("sd15", 512, 25, 2)
    side = size // 2 ** (len(CONFIGS[name]["vae"]["block_out_channels"]) - 1)
    latents = np.random.default_rng(0).standard_normal((1, 4, side, side)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        # the child builds the random pipeline folder (torch) and times diffusers; this process never imports torch
        cmd = [sys.executable, os.path.abspath(__file__), "--reference-sampling", tmp, "--config", name,
               "--steps", str(steps), "--size", str(size), "--repeats", str(repeats)]
        np.save(os.path.join(tmp, "latents.npy"), latents)
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "GPU_SUITE_DRY_RUN": "1" if dry else "0"})
        if proc.returncode != 0:
            raise RuntimeError(f"reference sampling child failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        ref = json.loads(proc.stdout.strip().splitlines()[-1])
        t = time.perf_counter()
        pipe = canvas_jax.Pipeline.from_pretrained(os.path.join(tmp, name), dtype=jnp.bfloat16,
                                                   param_dtype=jnp.bfloat16)
        load_s = time.perf_counter() - t
        kw = dict(num_steps=steps, guidance_scale=7.5, height=size, width=size, output_type="np",
                  sampler="dpmpp_2m", latents=latents)
        t = time.perf_counter()
        pipe(PROMPT, **kw)
        first = time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            img = pipe(PROMPT, **kw).images
            times.append(time.perf_counter() - t)
    ours = min(times)
    row = {"config": name, "size": size, "batch": 1, "steps": steps, "sampler": "dpmpp_2m", "guidance_scale": 7.5,
           "dtype": "bfloat16", "ours_s_per_image": round(ours, 4), "ours_compile_s": round(first - ours, 2),
           "ours_load_s": round(load_s, 2), "image_finite": bool(np.isfinite(img).all()), **ref}
    if "diffusers_s_per_image" in ref:
        row["ratio_diffusers_over_ours"] = round(ref["diffusers_s_per_image"] / ours, 3)
    return row


def _unet_step(dry: bool, config: dict, side: int, batch: int, steps: int, added_cond=None) -> dict:
    import jax.numpy as jnp

    from canvas_train_speed import ours_sd15

    t = time.perf_counter()
    run, flops = ours_sd15(batch, config=config, side=side, dtype=jnp.bfloat16, added_cond=added_cond)
    compile_s = time.perf_counter() - t  # build, compile and one step
    run()
    t = time.perf_counter()
    for _ in range(steps):
        run()
    step_s = (time.perf_counter() - t) / steps
    peak = peak_flops(device_kind())
    return {"batch": batch, "latent_side": side, "image_side": side * 8, "dtype": "bfloat16",
            "param_dtype": "float32", "timed_steps": steps, "step_s": round(step_s, 5),
            "images_per_s": round(batch / step_s, 2), "xla_flops_per_step": flops,
            "achieved_tflops_per_s": round(flops / step_s / 1e12, 4), "peak_tflops_dense_bf16": peak and peak / 1e12,
            "mfu": round(flops / step_s / peak, 4) if peak else None, "compile_and_first_step_s": round(compile_s, 2)}


def train_sd15(dry: bool, batch: int) -> dict:
    from canvas_train_speed import SD15_UNET

    config = TINY_UNET if dry else {**SD15_UNET, "sample_size": 64}
    return {"unet": "tiny" if dry else "sd15", **_unet_step(dry, config, 8 if dry else 64, 2 if dry else batch,
                                                            2 if dry else 10)}


def train_sdxl(dry: bool) -> dict:
    import jax.numpy as jnp

    config = TINY_SDXL_UNET if dry else SDXL_UNET
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    side = 8 if dry else 128
    added = {"text_embeds": jnp.zeros((1, pooled)),
             "time_ids": jnp.array([[side * 8, side * 8, 0, 0, side * 8, side * 8]], jnp.float32)}
    return {"unet": "tiny-sdxl" if dry else "sdxl", **_unet_step(dry, config, side, 1, 2 if dry else 5, added)}


# ------------------------------------------------------------------------------------------- recsys
def hstu_ml20m(dry: bool) -> dict:
    import numpy as np

    import hstu_train_step as h
    from recsys_jax.data.loader import load_dataset
    from recsys_jax.train.dataset_cache import resolve_dataset

    steps, warmup = (2, 1) if dry else (20, 3)
    with tempfile.TemporaryDirectory(prefix="gpu_suite_hstu_") as tmp:
        args = argparse.Namespace(dry_run=dry, data="", config=os.path.join(ROOT, "configs", "recsys", "hstu_ml1m.yaml"),
                                  work_dir=tmp, cache_dir=None, override=[] if dry else ML20M)
        cfg, where = h.load_run_config(args)
        dataset = load_dataset(resolve_dataset(cfg.data, verbose=False))
        batches = h.make_batches(dataset, cfg, warmup + steps)
        ours = h.time_ours(cfg, dataset, batches, warmup)
    m = cfg.model.hstu
    tokens = float(np.mean([b["mask"].sum() for b in batches]))
    return {"config": "tiny" if dry else "ml-20m (generative-recommenders hstu-sampled-softmax-n128-final.gin)",
            "data": where if dry else "synthetic sequences, ML-20M item count", "num_items": dataset.num_items,
            "embed_dim": m.embed_dim, "blocks": m.num_layers, "heads": m.num_heads, "dqk": m.attention_dim,
            "dv": m.linear_dim, "seq_len": cfg.data.max_len, "batch": cfg.train.batch_size,
            "negatives": cfg.loss.num_negatives, "dtype": "float32", "measured_steps": ours["measured_steps"],
            "seconds_per_step": ours["seconds_per_step"], "train_sequences_per_s": ours["train_sequences_per_s"],
            "real_tokens_per_batch": round(tokens, 1),
            "train_tokens_per_s": round(tokens / ours["seconds_per_step"], 1), "compile_s": ours["compile_s"],
            "last_loss": ours["last_loss"],
            "reference": "not installed (generative-recommenders is not on PyPI; its HSTU is timed by "
                         "benchmarks/reference/hstu_train_step.py with a checkout)"}


def topk_10m(dry: bool) -> dict:
    import recsys_topk

    items, queries, k = (20_000, 16, 10) if dry else (10_000_000, 256, 100)
    argv = ["--items", str(items), "--dim", "64", "--queries", str(queries), "--k", str(k), "--dtype", "bfloat16",
            "--lazy-corpus", "--no-faiss", "--no-ivf", "--repeats", "2" if dry else "5"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        recsys_topk.main(argv)
    rows = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    exact = next(r for r in rows if r["method"] == "ItemIndex exact")
    return {"items": items, "dim": 64, "dtype": "bfloat16", "queries": queries, "k": k, "qps": exact["qps"],
            "index_build_s": exact["build_s"], "command": "python benchmarks/recsys_topk.py " + " ".join(argv)}


ROWS = {
    "sampling_sd15": sampling_sd15,
    "train_sd15_b8": lambda dry: train_sd15(dry, 8),
    "train_sd15_b32": lambda dry: train_sd15(dry, 32),
    "train_sdxl_b1": train_sdxl,
    "hstu_ml20m": hstu_ml20m,
    "topk_10m": topk_10m,
}


def run_row(name: str, dry: bool) -> dict:
    """``ROWS[name]`` as one JSON-ready dict; an exception becomes ``{"row": name, "error": ...}``."""
    t = time.perf_counter()
    try:
        row = {"row": name, **ROWS[name](dry), **_common(dry)}
    except Exception as e:  # noqa: BLE001  (a failed row is reported and the suite goes on)
        traceback.print_exc(file=sys.stderr)
        row = {"row": name, "error": f"{type(e).__name__}: {e}"[:2000], "dry_run": dry}
    row["row_wall_s"] = round(time.perf_counter() - t, 2)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--row", action="append", choices=sorted(ROWS), help="row(s) to run (repeatable; default all)")
    p.add_argument("--list", action="store_true", help="print the row names, one a line")
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("GPU_SUITE_DRY_RUN") == "1",
                   help="tiny sizes on any device (also GPU_SUITE_DRY_RUN=1)")
    p.add_argument("--out", help="also append each JSON line to this file")
    p.add_argument("--reference-sampling", metavar="FOLDER", help=argparse.SUPPRESS)
    p.add_argument("--config", default="sd15", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=25, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=512, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(ROWS))
        return 0
    if args.reference_sampling:  # the sampling row's child process: build the folder, time diffusers
        from pathlib import Path

        from canvas_sampling import build

        folder = build(args.config, Path(args.reference_sampling))
        print(json.dumps(_reference_sampling(str(folder), args.steps, args.size, args.repeats)), flush=True)
        return 0
    if args.dry_run:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DRY_RUN_XLA_FLAGS}".strip()
    for name in args.row or ROWS:
        line = json.dumps(run_row(name, args.dry_run))
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
