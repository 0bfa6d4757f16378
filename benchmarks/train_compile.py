"""Compile time, program size and step time of a canvas training step (JSON lines).

    python benchmarks/train_compile.py [--config configs/canvas/shapes_tiny.yaml] [--task text_to_image|vae]
                                       [--steps 10] [key=value ...]

Builds the task from the config with a random VAE of the config's shape (written to a temporary folder), then
lowers and compiles the loop's train step on constant batches of the config's shapes (cached text states, no
latent cache: the step that `canvas-jax train` compiles, minus data loading) and times a few steps. Prints
{program, lower_s, compile_s, compile_cpu_s, hlo_lines, step_ms, step_cpu_ms}: wall and process CPU time (CPU
time is the fairer number on a shared machine). Run it with PYTHONPATH set to another checkout to compare two
versions of the library side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
from flax import nnx


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def loop_step(config: str, task_name: str, overrides: list[str], *, cache_latents: bool = False):
    """The loop's train step on constant random batches: ``(cfg, trainer, state, batch, jitted step)``.

    A random VAE of the config's shape stands in for the pretrained one; text states are cached (random);
    with ``cache_latents`` the batch carries VAE posterior moments instead of the step running the encoder.
    """
    from canvas_jax.config import CanvasTrainConfig
    from canvas_jax.convert.diffusers_models import save_vae
    from canvas_jax.models.vae import AutoencoderKL
    from canvas_jax.train.tasks import make_task
    from core_jax import config as config_lib
    from core_jax import mesh as mesh_lib
    from core_jax.loop import Trainer

    tmp = tempfile.mkdtemp()
    base = [f"task={task_name}", f"vae.cache_latents={str(cache_latents).lower()}", "text_encoder.cache=true",
            f"train.run_dir={tmp}/run"]
    cfg = config_lib.load(CanvasTrainConfig, config, [*base, *overrides])
    if task_name != "vae":
        save_vae(AutoencoderKL(cfg.vae.config, rngs=nnx.Rngs(0)), os.path.join(tmp, "vae"))
        cfg = config_lib.load(CanvasTrainConfig, config, [*base, f"vae.path={tmp}/vae", *overrides])
    task = make_task(cfg)
    trainer = Trainer(task, cfg)
    state = trainer.init_state()
    b, s = cfg.train.batch_size, cfg.data.image_size
    batch = {"image": jax.random.uniform(jax.random.key(0), (b, s, s, 3), minval=-1, maxval=1)}
    if task_name != "vae":
        from canvas_jax import text_conditioning

        d = text_conditioning.hidden_size(task.text_encoder)
        batch["text_emb"] = jax.random.normal(jax.random.key(1), (b, cfg.text_encoder.max_length, d))
        if cache_latents:
            post = jax.jit(task.vae.encode)(batch["image"])
            batch["latent_moments"] = jnp.concatenate([post.mean, post.logvar], axis=-1)
    batch = mesh_lib.global_batch({k: jax.device_get(v) for k, v in batch.items()}, trainer.mesh)
    return cfg, trainer, state, batch, jax.jit(trainer._train_step, donate_argnums=0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/canvas/shapes_tiny.yaml")
    p.add_argument("--task", default="text_to_image", choices=["text_to_image", "vae"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    cfg, trainer, state, batch, step = loop_step(args.config, args.task, args.overrides)
    b = cfg.train.batch_size
    lowered, lower_s, _ = _timed(lambda: step.lower(state, batch))
    compiled, compile_s, compile_cpu = _timed(lowered.compile)
    state, _ = compiled(state, batch)
    jax.block_until_ready(state)

    def run():
        nonlocal state
        for _ in range(args.steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(state)

    _, run_s, run_cpu = _timed(run)
    print(json.dumps({"program": f"{os.path.basename(args.config)} {args.task} train step", "batch": b,
                      "lower_s": round(lower_s, 2), "compile_s": round(compile_s, 2),
                      "compile_cpu_s": round(compile_cpu, 2), "hlo_lines": compiled.as_text().count("\n"),
                      "step_ms": round(run_s / args.steps * 1000, 1),
                      "step_cpu_ms": round(run_cpu / args.steps * 1000, 1), "jax": jax.__version__}))


if __name__ == "__main__":
    main()
