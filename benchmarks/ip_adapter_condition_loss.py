"""How much of the scene an IP-Adapter run's image branch carries: the diffusion loss of its base model + adapter
on fresh Shapes scenes (seed 123, not the training stream), the same noise for every condition, at five
timesteps, under four conditions: caption + image, caption only, image only (empty caption), neither (the
unconditional branches). Prints one JSON line: the mean per condition and per timestep. Where "image only" sits
between "neither" and "caption only" at high t (where the layout is decided) is how much of what the caption
says reaches the UNet through the image.

    python benchmarks/ip_adapter_condition_loss.py --run runs/ip_adapter_shapes
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from canvas_jax.data import shapes  # noqa: E402
from canvas_jax.diffusion.schedules import add_noise, training_target  # noqa: E402
from canvas_jax.image_text import load_adapter_image_encoder  # noqa: E402
from canvas_jax.pipeline import Pipeline  # noqa: E402
from canvas_jax.runs import load_config  # noqa: E402

TIMESTEPS = (100, 300, 500, 700, 900)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a task=ip_adapter run folder")
    p.add_argument("--scenes", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    cfg = load_config(args.run)
    pipe = Pipeline.from_pretrained(cfg.init_from)
    folder = os.path.join(args.run, "ip_adapter")
    pipe.load_ip_adapter(folder, image_encoder_folder=None)
    clip = load_adapter_image_encoder(folder)
    unet, vae, encoder, n = pipe.unet, pipe.vae, pipe.components.text_encoder, args.scenes
    size = cfg.data.image_size
    refs = shapes.sample_prompts(n, shapes.ShapesConfig(resolution=size, **cfg.data.options), seed=123)
    images = np.stack([shapes.render(scene, size) for _, scene in refs])
    conds = np.stack([shapes.render(scene, size, jitter_seed=[7, i]) for i, (_, scene) in enumerate(refs)])
    if unet.ip_adapter.plus:
        image, none = clip.image_tokens(conds), np.repeat(clip.negative_image_tokens(), n, 0)
    else:
        image = clip.embed_images(conds)
        none = np.zeros_like(image)

    def context(texts):
        tok = pipe.tokenizer(texts)
        return encoder(jnp.asarray(tok["input_ids"]), jnp.asarray(tok["attention_mask"])).last_hidden_state

    caption, empty = context([c for c, _ in refs]), context([""] * n)
    z0 = (vae.encode(jnp.asarray(images, jnp.float32) / 127.5 - 1.0).mode() - (vae.shift_factor or 0.0))
    z0 = z0 * vae.scaling_factor
    sched = pipe.schedule

    @jax.jit
    def error(z0, noise, t, ctx, emb):
        pred = unet(add_noise(sched, z0, noise, t), t, ctx, ip_tokens=unet.ip_adapter(emb[:, None]))
        return jnp.mean((pred - training_target(sched, z0, noise, t)) ** 2, axis=(1, 2, 3))

    conditions = {"caption+image": (caption, image), "caption": (caption, none), "image": (empty, image),
                  "neither": (empty, none)}
    out = {k: {t: [] for t in TIMESTEPS} for k in conditions}
    rng = np.random.default_rng(0)
    for t in TIMESTEPS:
        for b in range(0, n, args.batch):
            sl = slice(b, b + args.batch)
            noise = jnp.asarray(rng.standard_normal(z0[sl].shape), jnp.float32)
            steps = jnp.full((noise.shape[0],), t, jnp.int32)
            for name, (ctx, emb) in conditions.items():
                out[name][t].append(np.asarray(error(z0[sl], noise, steps, ctx[sl], jnp.asarray(emb[sl]))))
    per_t = {k: {str(t): round(float(np.mean(np.concatenate(v[t]))), 5) for t in TIMESTEPS} for k, v in out.items()}
    print(json.dumps({"bench": "ip_adapter_condition_loss", "run": args.run, "scenes": n,
                      "mean": {k: round(float(np.mean(list(v.values()))), 5) for k, v in per_t.items()},
                      "per_timestep": per_t}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
