"""Run a tiny text-to-image training in a subprocess (for the kill -9 and signal tests).

usage: python tests/canvas/train/driver.py RUN_DIR VAE_DIR STEPS [PRETRAIN_STEPS]
  STEP_SLEEP slows each step (a hook); with PRETRAIN_STEPS a VAE is pretrained into VAE_DIR first
  (checkpoint every 2 steps, no sample grid), DATA_SLEEP slows each training example (both runs) and
  VAE_ONLY=1 runs the pretraining alone; IP_ADAPTER=INIT_FROM:CLIP_RUN trains an IP-Adapter instead;
  RL_INIT_FROM=RUN (with RL_PROMPTS=FOLDER) a tiny task=rl run (conftest.rl_overrides).
  Exits as the console entry does (143 on SIGTERM).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import fakes  # noqa: E402
from conftest import tiny_config  # noqa: E402

from canvas_jax.train.run import train, vae_pretrain_config  # noqa: E402
from core_jax.config import exit_on_error  # noqa: E402
from core_jax.loop import Hook  # noqa: E402


@exit_on_error
def main():
    run_dir, vae_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # data.dataset "fake" (the data is fakes.data_fn's): no default Shapes prompts, so no sample grid at the end
    over = {"train.steps": steps, "train.ema_decay": 0.9, "train.checkpoint.every": 4, "train.checkpoint.keep": 10,
            "train.checkpoint.async_save": True, "sampling.prompts": [], "vae.cache_latents": True,
            "data.dataset": "fake"}
    if len(sys.argv) > 4:
        over.update({"vae.pretrain_steps": int(sys.argv[4]), "train.checkpoint.every": 2})
    ip = os.environ.get("IP_ADAPTER")  # "INIT_FROM_RUN:CLIP_RUN": a task=ip_adapter run on those
    if ip:
        init_from, encoder = ip.split(":")
        over.update({"task": "ip_adapter", "init_from": init_from, "ip_adapter.image_encoder": encoder})
    if os.environ.get("RL_INIT_FROM"):  # a task=rl run on that run (prompt files written into RL_PROMPTS)
        from conftest import rl_overrides

        over.update({**rl_overrides(os.environ["RL_PROMPTS"], os.environ["RL_INIT_FROM"]), "train.checkpoint.every": 3,
                     "train.ema_decay": None, "train.eval_every": 4})
    cfg = tiny_config(run_dir, vae_path=vae_dir, **over)
    if os.environ.get("VAE_ONLY"):
        cfg = vae_pretrain_config(cfg)
    delay = float(os.environ.get("STEP_SLEEP", "0"))
    hooks = [Hook(every=1, fn=lambda *a: time.sleep(delay), at_end=False)] if delay else []
    train(cfg, data_fn=fakes.data_fn(delay=float(os.environ.get("DATA_SLEEP", "0")), condition=bool(ip)),
          extra_hooks=hooks)


if __name__ == "__main__":
    main()
