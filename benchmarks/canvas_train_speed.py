"""Canvas training steps side by side with diffusers + torch, in one run (JSON lines).

    python benchmarks/canvas_train_speed.py [--which vae unet sd15] [--steps 5] [--rounds 2]

For each model, the same architecture (ours saved with our diffusers exporter, loaded by diffusers), batch,
loss, optimizer (AdamW, gradient clipping at the config's norm, EMA where the config keeps one) on constant
random batches, timed the same way on both sides: ``steps`` steps after a warm-up, ``rounds`` rounds taken
in turn (ours, torch, ours, torch, ...) so that load on a shared machine hits both; the best round counts.

- ``vae``: shapes_tiny's VAE step (L1 + KL, batch 32, 32x32), as ``vae.pretrain_steps`` trains it (no EMA).
- ``unet``: shapes_tiny's text-to-image step (batch 64, cached latents and text states, Min-SNR weights, EMA).
- ``sd15``: a Stable-Diffusion-1.5-sized UNet (860M parameters) at 32x32 latents, batch 2, 77 x 768 text states,
  epsilon loss, AdamW; ours is a bare jitted step (no loop extras) like the torch one.

Ours for ``vae``/``unet`` is the loop's own train step (``core_jax.loop``: NaN guard, clipping, EMA, metrics),
the step ``canvas-jax train`` runs minus data loading. Prints per model: step time (wall and process CPU) of
both, ``speedup`` = torch time / our time (> 1: we are faster), our FLOP/s by XLA's count, and the f32
matmul rate of this machine measured in the same run (2048^3, jnp.dot).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import core_jax  # noqa: F401  (its XLA:CPU defaults must be set before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_compile import loop_step  # noqa: E402

CONFIG = "configs/canvas/shapes_tiny.yaml"
SD15_UNET = dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, cross_attention_dim=768,
                 attention_head_dim=8, sample_size=32)


def _time(fn, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call of ``fn`` over ``steps`` calls."""
    w, c = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - w) / steps, (time.process_time() - c) / steps


def matmul_rate() -> float:
    a = jax.random.normal(jax.random.key(0), (2048, 2048))
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    best = min(_time(lambda: jax.block_until_ready(f(a)), 3)[0] for _ in range(3))
    return 2 * 2048 ** 3 / best


# ------------------------------------------------------------------------------------------- ours
def ours_loop(task: str, overrides: list[str]):
    cfg, _, state, batch, step = loop_step(CONFIG, task, overrides, cache_latents=task != "vae")
    compiled = step.lower(state, batch).compile()
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
    box = [compiled(state, batch)[0]]
    jax.block_until_ready(box[0])

    def run():
        box[0], metrics = compiled(box[0], batch)
        jax.block_until_ready(metrics)

    return cfg, run, flops


def ours_sd15(batch: int, config: dict = SD15_UNET, side: int = 32, dtype=jnp.float32, added_cond=None):
    """A bare jitted UNet train step (epsilon loss, AdamW) on constant random inputs: (run, XLA FLOPs per step).
    ``config``/``side``: the UNet and its latent side; ``dtype``: compute dtype (weights stay float32);
    ``added_cond``: SDXL's ``added_cond_kwargs`` for one example (broadcast over the batch)."""
    import optax
    from flax import nnx

    from canvas_jax.models.unet import UNet2DConditionModel

    unet = UNet2DConditionModel(config, rngs=nnx.Rngs(0), dtype=dtype)
    opt = nnx.Optimizer(unet, optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5)), wrt=nnx.Param)
    graph, state = nnx.split((unet, opt))
    k = jax.random.split(jax.random.key(0), 3)
    x0 = jax.random.normal(k[0], (batch, side, side, unet.config["in_channels"]))
    ctx = jax.random.normal(k[1], (batch, 77, unet.config["cross_attention_dim"]))
    t = jnp.array([999, 500][:batch] + [250] * max(batch - 2, 0))
    added = None if added_cond is None else {n: jnp.broadcast_to(v, (batch, *jnp.shape(v)[1:]))
                                             for n, v in added_cond.items()}

    @jax.jit
    def step(state, x0, ctx, t, key):
        unet, opt = nnx.merge(graph, state)
        noise = jax.random.normal(key, x0.shape)

        def loss(m):
            return jnp.mean(jnp.square(m(x0 + noise, t, ctx, added).astype(jnp.float32) - noise))

        l, grads = nnx.value_and_grad(loss)(unet)
        opt.update(unet, grads)
        return nnx.state((unet, opt)), l

    compiled = step.lower(state, x0, ctx, t, k[2]).compile()
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
    box = [state]

    def run():
        box[0], l = compiled(box[0], x0, ctx, t, k[2])
        jax.block_until_ready(l)

    run()
    return run, flops


# ------------------------------------------------------------------------------------------ torch
def _torch_opt(torch, params, cfg_optim):
    return torch.optim.AdamW(params, lr=cfg_optim.learning_rate, betas=(cfg_optim.b1, cfg_optim.b2),
                             eps=cfg_optim.eps, weight_decay=cfg_optim.weight_decay)


def torch_vae(cfg, folder: str):
    import diffusers
    import torch

    from canvas_jax.convert.diffusers_models import save_vae
    from canvas_jax.models.vae import AutoencoderKL
    from flax import nnx

    save_vae(AutoencoderKL(cfg.vae.config, rngs=nnx.Rngs(0)), folder)
    vae = diffusers.AutoencoderKL.from_pretrained(folder).train()
    params = list(vae.parameters())
    opt = _torch_opt(torch, params, cfg.optim)
    b, s = cfg.train.batch_size, cfg.data.image_size
    x = torch.rand(b, 3, s, s) * 2 - 1

    def run():
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        loss = (recon - x).abs().mean() + cfg.vae.kl_weight * post.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def torch_unet(cfg, folder: str):
    import diffusers
    import torch

    from canvas_jax.convert.diffusers_models import save_unet
    from canvas_jax.models.unet import UNet2DConditionModel
    from flax import nnx

    latent = cfg.vae.config["latent_channels"]
    side = cfg.data.image_size // 2 ** (len(cfg.vae.config["block_out_channels"]) - 1)
    save_unet(UNet2DConditionModel({"sample_size": side, **cfg.unet, "in_channels": latent, "out_channels": latent},
                                   rngs=nnx.Rngs(0)), folder)
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder).train()
    params = list(unet.parameters())
    ema = [p.detach().clone() for p in params] if cfg.train.ema_decay else None
    opt = _torch_opt(torch, params, cfg.optim)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    alphas = sched.alphas_cumprod
    b = cfg.train.batch_size
    moments = torch.randn(b, 2 * latent, side, side)
    ctx = torch.randn(b, cfg.text_encoder.max_length, cfg.unet["cross_attention_dim"])
    gamma = cfg.diffusion.min_snr_gamma

    def run():
        mean, logvar = moments.chunk(2, dim=1)
        x0 = mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * torch.randn_like(mean)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (b,))
        x_t = sched.add_noise(x0, noise, t)
        pred = unet(x_t, t, ctx).sample
        snr = alphas[t] / (1 - alphas[t])
        w = torch.minimum(snr, torch.full_like(snr, gamma)) / snr
        loss = (w * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - cfg.train.ema_decay)

    return run


def torch_sd15(batch: int):
    import diffusers
    import torch

    unet = diffusers.UNet2DConditionModel(**SD15_UNET).train()
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-4)
    x0, ctx = torch.randn(batch, 4, 32, 32), torch.randn(batch, 77, 768)
    t = torch.tensor([999, 500][:batch] + [250] * max(batch - 2, 0))

    def run():
        noise = torch.randn_like(x0)
        loss = ((unet(x0 + noise, t, ctx).sample - noise) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


# -------------------------------------------------------------------------------------------- run
def compare(name: str, ours, theirs, flops: float, images: int, steps: int, rounds: int, rate: float) -> dict:
    ours(), theirs()  # warm-up (first torch step allocates the optimizer state)
    o, t = [], []
    for _ in range(rounds):
        o.append(_time(ours, steps))
        t.append(_time(theirs, steps))
    (ow, oc), (tw, tc) = min(o), min(t)
    return {"model": name, "batch": images, "ours_step_ms": round(ow * 1e3, 1), "ours_cpu_ms": round(oc * 1e3, 1),
            "torch_step_ms": round(tw * 1e3, 1), "torch_cpu_ms": round(tc * 1e3, 1),
            "ours_images_per_s": round(images / ow, 1), "torch_images_per_s": round(images / tw, 1),
            "speedup": round(tw / ow, 2), "speedup_cpu": round(tc / oc, 2),
            "ours_gflops_per_s": round(flops / ow / 1e9, 1), "matmul_gflops_per_s": round(rate / 1e9, 1),
            "ours_fraction_of_matmul_rate": round(flops / ow / rate, 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--which", nargs="+", default=["vae", "unet"], choices=["vae", "unet", "sd15"])
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all cores)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rate = matmul_rate()
    env = {"jax": jax.__version__, "torch": torch.__version__, "cores": os.cpu_count(),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "avx512": "avx512f" in open("/proc/cpuinfo").read()}
    print(json.dumps({"environment": env}), flush=True)
    tmp = tempfile.mkdtemp()
    for name in args.which:
        if name == "vae":
            cfg, ours, flops = ours_loop("vae", ["train.ema_decay=null"])
            theirs, images = torch_vae(cfg, os.path.join(tmp, "vae")), cfg.train.batch_size
        elif name == "unet":
            cfg, ours, flops = ours_loop("text_to_image", ["train.batch_size=64"])
            theirs, images = torch_unet(cfg, os.path.join(tmp, "unet")), cfg.train.batch_size
        else:
            images = 2
            ours, flops = ours_sd15(images)
            theirs = torch_sd15(images)
        print(json.dumps(compare(name, ours, theirs, flops, images, args.steps, args.rounds, rate)), flush=True)
        del ours, theirs
        gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
