"""Loop hooks of the canvas tasks: sample grids (PNG) with the EMA weights, loss curves (PNG), LoRA weights, and
the run folder's ``models.json`` (:mod:`canvas_jax.runs`; a VAE run's with its measured latent scale, at its end).

Files land in the run folder: ``samples/step_000100.png`` (one tile per prompt, captioned),
``loss.png`` (train loss per logged step, eval loss as dots; drawn with PIL, no matplotlib) and, for
``task=finetune`` with ``lora.rank > 0``, ``lora/pytorch_lora_weights.safetensors`` (rewritten at every
checkpoint and at the end).
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image, ImageDraw

from canvas_jax import images as imgs
from canvas_jax.components import Components
from canvas_jax.pipeline import Pipeline
from canvas_jax.runs import LORA_TASKS, save_manifest, scheduler_config
from core_jax.loop import Hook
from core_jax.metrics import read_jsonl


class SampleGrid:
    """Generates ``prompts`` with the current (EMA) UNet, frozen VAE and text encoder through
    :class:`canvas_jax.Pipeline` (the one sampling path: what the run folder later samples); one PNG per call."""

    def __init__(self, task, prompts: list[str], *, sampler: str = "dpmpp_2m", num_steps: int = 20,
                 guidance_scale: float = 3.0, seed: int = 0, image_size: int = 32):
        if not prompts:
            raise ValueError("sample grid: no prompts (set sampling.prompts)")
        self.task, self.prompts = task, list(prompts)
        self.sampler, self.num_steps, self.guidance_scale, self.seed = sampler, num_steps, guidance_scale, seed
        self.image_size = image_size

    def pipeline(self, model, mesh=None) -> Pipeline:
        """A :class:`Pipeline` on ``model``'s live weights (no copy) and the task's tokenizer and schedule."""
        encoder = model.text_encoder if model.text_encoder is not None else self.task.text_encoder
        parts = Components(unet=model.unet, vae=model.vae, text_encoder=encoder, tokenizer=self.task.tokenizer,
                           scheduler_config=scheduler_config(self.task.sched),
                           model_index={"force_zeros_for_empty_prompt": False})
        return Pipeline(parts, mesh=mesh)

    def images(self, model, mesh=None) -> np.ndarray:
        """NHWC float32 images in [0, 1], one per prompt."""
        pipe = self.pipeline(model, mesh)
        return pipe(self.prompts, height=self.image_size, width=self.image_size, num_steps=self.num_steps,
                    guidance_scale=self.guidance_scale, sampler=self.sampler, seed=self.seed,
                    output_type="np").images

    def __call__(self, trainer, step: int, state: dict) -> None:
        out = self.images(trainer.model(state, ema=True), trainer.mesh)
        if jax.process_index() != 0:
            return
        folder = os.path.join(trainer.tc.run_dir, "samples")
        os.makedirs(folder, exist_ok=True)
        tiles = [t.resize((max(t.width, 128),) * 2, Image.Resampling.NEAREST) for t in imgs.to_pil(out)]
        grid = imgs.make_grid(tiles, captions=self.prompts, cols=min(4, len(self.prompts)))
        grid.save(os.path.join(folder, f"step_{step:06d}.png"))


class WriteManifest:
    """Writes ``RUN_DIR/models.json`` (:func:`canvas_jax.runs.save_manifest`) at its first call: the run folder
    then reads back alone."""

    def __init__(self, task):
        self.task, self.done = task, False

    def __call__(self, trainer, step: int, state: dict) -> None:
        if not self.done:
            t = self.task
            save_manifest(trainer.tc.run_dir, trainer.model(state), sched=t.sched, text_source=t.text_source,
                          max_length=t.tokenizer.model_max_length)
            self.done = True


def finish_vae(trainer, step: int, state: dict) -> None:
    """At the end of a VAE run: measure the latent RMS on the eval data and write ``RUN_DIR/models.json`` with
    ``scaling_factor = 1 / RMS`` (unit-variance latents for the diffusion model; the config's value when the
    run has no eval data)."""
    vae = trainer.model(state)
    ms = trainer.evaluate(state).get("latent_ms", 0.0)
    if ms > 0:
        vae.config = {**vae.config, "scaling_factor": 1.0 / math.sqrt(ms)}
    save_manifest(trainer.tc.run_dir, vae)


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


def save_ip_adapter_weights(trainer, step: int, state: dict) -> None:
    """Write the IP-Adapter (EMA when kept) to ``RUN_DIR/ip_adapter/`` (diffusers format + image_encoder.json)."""
    from canvas_jax.train.ip_adapter_task import save_adapter

    params = state["ema"] if "ema" in state else state["params"]
    params = jax.jit(lambda p: p, out_shardings=NamedSharding(trainer.mesh, P()))(params)
    if jax.process_index() == 0:
        cfg = trainer.task.cfg
        save_adapter(trainer.model({"params": params, "rest": state["rest"]}).unet, trainer.tc.run_dir,
                     cfg.ip_adapter.image_encoder)


def make_hooks(task, cfg, prompts: list[str] | None = None) -> list[Hook]:
    """The loss-curve hook, the ``models.json`` writer, the sample-grid hook (text-to-image and fine-tuning with
    prompts) and the LoRA saver (LoRA fine-tuning) for a run config."""
    s = cfg.sampling
    never = cfg.train.steps + 1  # "only at the end": the loop calls at_end hooks after the last step
    hooks = [Hook(every=s.plot_every or never, fn=loss_curve)]
    if cfg.task == "vae":
        hooks.append(Hook(every=never, fn=finish_vae))
    elif cfg.task not in ("clip", "ip_adapter", "reward_model"):  # these read back from config.yaml (+ init_from)
        hooks.append(Hook(every=1, fn=WriteManifest(task)))
    if cfg.task in LORA_TASKS and cfg.lora.rank > 0:
        hooks.append(Hook(every=cfg.train.checkpoint.every or never, fn=save_lora_weights))
    if cfg.task == "ip_adapter":
        hooks.append(Hook(every=cfg.train.checkpoint.every or never, fn=save_ip_adapter_weights))
    if cfg.task == "rl":  # held-out prompts sampled and scored (the loop's eval has no data for rl)
        hooks.append(Hook(every=cfg.train.eval_every or never, fn=task.heldout_eval))
    prompts = list(s.prompts) or list(prompts or [])
    if cfg.task in ("text_to_image", *LORA_TASKS) and prompts:
        grid = SampleGrid(task, prompts[: max(s.num_prompts, 1)], sampler=s.sampler, num_steps=s.num_steps,
                          guidance_scale=s.guidance_scale, seed=s.seed, image_size=cfg.data.image_size)
        hooks.append(Hook(every=s.every or never, fn=grid))
    return hooks
