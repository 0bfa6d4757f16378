"""Loop hooks of the canvas tasks: sample grids (PNG) with the EMA weights, loss curves (PNG), LoRA weights.

Files land in the run folder: ``samples/step_000100.png`` (one tile per prompt, captioned),
``loss.png`` (train loss per logged step, eval loss as dots; drawn with PIL, no matplotlib) and, for
``task=finetune`` with ``lora.rank > 0``, ``lora/pytorch_lora_weights.safetensors`` (rewritten at every
checkpoint and at the end).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image, ImageDraw

from canvas_jax import images as imgs
from canvas_jax.diffusion import cfg_from_batch, sample
from core_jax.loop import Hook
from core_jax.metrics import read_jsonl


class SampleGrid:
    """Generates ``prompts`` with the current (EMA) UNet, frozen VAE and text encoder; one PNG per call."""

    def __init__(self, task, prompts: list[str], *, sampler: str = "dpmpp_2m", num_steps: int = 20,
                 guidance_scale: float = 3.0, seed: int = 0, image_size: int = 32):
        if not prompts:
            raise ValueError("sample grid: no prompts (set sampling.prompts)")
        self.task, self.prompts = task, list(prompts)
        self.sampler, self.num_steps, self.guidance_scale, self.seed = sampler, num_steps, guidance_scale, seed
        self.image_size = image_size
        self._fn = None

    def _compile(self, graphdef):
        sched, sampler, steps = self.task.sched, self.sampler, self.num_steps

        def generate(state, cond, uncond, noise, scale):
            model = nnx.merge(graphdef, state)

            def model_fn(x, t):
                out = model.unet(jnp.concatenate([x, x]), t, jnp.concatenate([uncond, cond]))
                return cfg_from_batch(out, scale)

            z = sample(model_fn, noise, sched, sampler=sampler, num_steps=steps, rng=jax.random.key(self.seed))
            vae = model.vae
            x = vae.decode(z.astype(jnp.float32) / vae.scaling_factor + vae.shift_factor).astype(jnp.float32)
            return jnp.clip(x / 2.0 + 0.5, 0.0, 1.0)

        return jax.jit(generate)

    def images(self, model) -> np.ndarray:
        """NHWC float32 images in [0, 1], one per prompt."""
        graphdef, state = nnx.split(model)
        if self._fn is None:
            self._fn = self._compile(graphdef)
        cond = self.task.encode_prompts(self.prompts)
        uncond = self.task.encode_prompts([""] * len(self.prompts))
        f = model.vae.downsample_factor
        side = self.image_size // f
        shape = (len(self.prompts), side, side, model.vae.config["latent_channels"])
        noise = jax.random.normal(jax.random.key(self.seed), shape, jnp.float32)
        return np.asarray(jax.device_get(self._fn(state, cond, uncond, noise, jnp.float32(self.guidance_scale))))

    def __call__(self, trainer, step: int, state: dict) -> None:
        out = self.images(trainer.model(state, ema=True))
        if jax.process_index() != 0:
            return
        folder = os.path.join(trainer.tc.run_dir, "samples")
        os.makedirs(folder, exist_ok=True)
        tiles = [t.resize((max(t.width, 128),) * 2, Image.Resampling.NEAREST) for t in imgs.to_pil(out)]
        grid = imgs.make_grid(tiles, captions=self.prompts, cols=min(4, len(self.prompts)))
        grid.save(os.path.join(folder, f"step_{step:06d}.png"))


def plot_curves(series: dict[str, tuple[list[float], list[float]]], path: str, *, title: str = "loss",
                size: tuple[int, int] = (480, 300)) -> None:
    """A minimal line plot (PIL) of ``{name: (steps, values)}``; the first series is a line, others dots."""
    w, h = size
    left, right, top, bottom = 56, 12, 24, 28
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if math.isfinite(y)]
    d.text((left, 6), title, fill="black")
    if not pts:
        img.save(path)
        return
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)

    def at(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), top + (1 - (y - y0) / (y1 - y0)) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="gray")
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        d.text((2, at(x0, yv)[1] - 5), f"{yv:.3g}", fill="black")
    d.text((left, h - bottom + 4), f"{x0:g}", fill="black")
    d.text((w - right - 40, h - bottom + 4), f"step {x1:g}", fill="black")
    colours = ["#1f4e9c", "#c0392b", "#27ae60", "#8e44ad"]
    for i, (name, (xs, ys)) in enumerate(series.items()):
        c = colours[i % len(colours)]
        line = [at(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
        if i == 0 and len(line) > 1:
            d.line(line, fill=c, width=2)
        else:
            for px, py in line:
                d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=c)
        d.text((w - right - 110, top + 4 + 12 * i), name, fill=c)
    img.save(path)


def loss_curve(trainer, step: int, state: dict) -> None:
    """Write ``RUN_DIR/loss.png`` from ``metrics.jsonl`` (train ``loss``; eval ``loss`` or ``recon_mse``)."""
    run_dir = trainer.tc.run_dir
    path = os.path.join(run_dir, "metrics.jsonl")
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    series = {}
    train = {r["step"]: r["loss"] for r in read_jsonl(path, "train") if "loss" in r}
    if train:
        steps = sorted(train)
        series["train loss"] = (steps, [train[s] for s in steps])
    for key in ("loss", "recon_mse"):
        ev = {r["step"]: r[key] for r in read_jsonl(path, "eval") if key in r}
        if ev:
            steps = sorted(ev)
            series[f"eval {key}"] = (steps, [ev[s] for s in steps])
            break
    plot_curves(series, os.path.join(run_dir, "loss.png"))


def save_lora_weights(trainer, step: int, state: dict) -> None:
    """Write the UNet's LoRA adapters (EMA when kept) to ``RUN_DIR/lora/pytorch_lora_weights.safetensors``."""
    from canvas_jax.convert.lora import save_lora
    from canvas_jax.train.finetune_task import lora_file

    params = state["ema"] if "ema" in state else state["params"]  # the adapters: small, gathered to every host
    params = jax.jit(lambda p: p, out_shardings=NamedSharding(trainer.mesh, P()))(params)
    if jax.process_index() == 0:
        save_lora(trainer.model({"params": params, "rest": state["rest"]}).unet, lora_file(trainer.tc.run_dir))


def make_hooks(task, cfg, prompts: list[str] | None = None) -> list[Hook]:
    """The loss-curve hook, the sample-grid hook (text-to-image and fine-tuning with prompts) and the LoRA
    saver (LoRA fine-tuning) for a run config."""
    s = cfg.sampling
    never = cfg.train.steps + 1  # "only at the end": the loop calls at_end hooks after the last step
    hooks = [Hook(every=s.plot_every or never, fn=loss_curve)]
    if cfg.task == "finetune" and cfg.lora.rank > 0:
        hooks.append(Hook(every=cfg.train.checkpoint.every or never, fn=save_lora_weights))
    prompts = list(s.prompts) or list(prompts or [])
    if cfg.task in ("text_to_image", "finetune") and prompts:
        grid = SampleGrid(task, prompts[: max(s.num_prompts, 1)], sampler=s.sampler, num_steps=s.num_steps,
                          guidance_scale=s.guidance_scale, seed=s.seed, image_size=cfg.data.image_size)
        hooks.append(Hook(every=s.every or never, fn=grid))
    return hooks
