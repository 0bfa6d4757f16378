"""Sampling speed: canvas_jax.Pipeline against diffusers' StableDiffusionPipeline with the same random weights.

For each config a random diffusers pipeline is built and saved (no download), diffusers samples from it, then
our Pipeline loads the same folder and samples with the same latents (compile time reported separately).
Prints one JSON line per config:

    python benchmarks/canvas_sampling.py [--configs tiny sd15] [--steps 25] [--size 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
                 skip_prk_steps=True, steps_offset=1, clip_sample=False)
CONFIGS = {
    "tiny": dict(
        unet=dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
                  attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        vae=dict(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
        clip=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4),
        size=32),
    "sd15": dict(  # Stable Diffusion 1.5's UNet, VAE and CLIP ViT-L/14 text encoder shapes
        unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                  attention_head_dim=8, sample_size=64),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                 sample_size=512),
        clip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  vocab_size=49408),
        size=256),
}


def _tokenizer_folder(folder: Path) -> Path:
    """A minimal CLIP tokenizer (byte alphabet, no merges) that transformers' CLIPTokenizer reads."""
    folder.mkdir(parents=True, exist_ok=True)
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = [chr(c) for c in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps({**specials, "model_max_length": 77}))
    return folder


def build(name: str, root: Path) -> Path:
    import diffusers
    import torch
    import transformers

    cfg = CONFIGS[name]
    tokenizer = transformers.CLIPTokenizer.from_pretrained(_tokenizer_folder(root / "tok"))
    torch.manual_seed(0)
    clip = {"vocab_size": len(tokenizer), **cfg["clip"]}
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        **clip, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    unet = diffusers.UNet2DConditionModel(**cfg["unet"]).eval()
    vae = diffusers.AutoencoderKL(**cfg["vae"]).eval()
    with torch.no_grad():  # move off the zero initialisations so every layer does work
        for p in unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=diffusers.DPMSolverMultistepScheduler.from_config(SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    folder = root / name
    pipe.save_pretrained(folder)
    return folder


def run(name: str, steps: int, size: int | None, repeats: int, root: Path) -> dict:
    import diffusers
    import torch

    size = size or CONFIGS[name]["size"]
    folder = build(name, root)
    prompt = "a cozy reading nook"
    side = size // 2 ** (len(CONFIGS[name]["vae"]["block_out_channels"]) - 1)
    latents = np.random.default_rng(0).standard_normal((1, 4, side, side)).astype(np.float32)
    kw = dict(num_inference_steps=steps, guidance_scale=7.5, height=size, width=size, output_type="np")

    ref = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    ref.set_progress_bar_config(disable=True)
    torch.set_grad_enabled(False)
    ref(prompt, latents=torch.from_numpy(latents), **kw)  # warm-up
    ref_times = []
    for _ in range(repeats):
        t = time.perf_counter()
        ref_img = ref(prompt, latents=torch.from_numpy(latents), **kw).images
        ref_times.append(time.perf_counter() - t)
    del ref
    gc.collect()

    import canvas_jax

    t = time.perf_counter()
    pipe = canvas_jax.Pipeline.from_pretrained(folder)
    load_s = time.perf_counter() - t
    ours_kw = dict(num_steps=steps, guidance_scale=7.5, height=size, width=size, output_type="np",
                   sampler="dpmpp_2m", latents=latents)
    t = time.perf_counter()
    pipe(prompt, **ours_kw)
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        img = pipe(prompt, **ours_kw).images
        times.append(time.perf_counter() - t)
    ours, theirs = min(times), min(ref_times)
    import jax

    return {"benchmark": "canvas_sampling", "config": name, "size": size, "batch": 1, "steps": steps,
            "sampler": "dpmpp_2m", "guidance_scale": 7.5, "device": jax.devices()[0].device_kind,
            "ours_s": round(ours, 3), "diffusers_s": round(theirs, 3), "ratio_diffusers_over_ours": round(theirs / ours, 3),
            "ours_compile_s": round(first - ours, 2), "ours_load_s": round(load_s, 2),
            "max_abs_diff_vs_diffusers": float(np.abs(img - ref_img).max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "sd15"], choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=None, help="image side (default: 32 tiny, 256 sd15)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    for name in args.configs:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run(name, args.steps, args.size if name != "tiny" else None, args.repeats, Path(tmp))),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
