"""Run a tiny text-to-image training in a subprocess (for the kill -9 resume test).

usage: python tests/canvas/train/driver.py RUN_DIR VAE_DIR STEPS [overrides...]; env STEP_SLEEP slows each step.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import fakes  # noqa: E402
from conftest import tiny_config  # noqa: E402

from canvas_jax.train.run import train  # noqa: E402
from core_jax.loop import Hook  # noqa: E402


def main():
    run_dir, vae_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = tiny_config(run_dir, vae_path=vae_dir, **{"train.steps": steps, "train.ema_decay": 0.9,
                                                    "train.checkpoint.every": 4, "train.checkpoint.keep": 10,
                                                    "train.checkpoint.async_save": True, "sampling.prompts": [],
                                                    "vae.cache_latents": True})
    delay = float(os.environ.get("STEP_SLEEP", "0"))
    hooks = [Hook(every=1, fn=lambda *a: time.sleep(delay), at_end=False)] if delay else []
    train(cfg, data_fn=fakes.data_fn(), extra_hooks=hooks)


if __name__ == "__main__":
    main()
