"""Fixtures for the canvas training tests: a tiny random VAE folder, tiny run configs, a trained tiny t2i run."""

from __future__ import annotations

import os
import sys

import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(__file__))
import fakes  # noqa: E402

from canvas_jax.config import CanvasTrainConfig  # noqa: E402
from canvas_jax.convert.diffusers_models import save_vae  # noqa: E402
from canvas_jax.models.vae import AutoencoderKL  # noqa: E402
from core_jax import config as config_lib  # noqa: E402


def tiny_config(run_dir, task="text_to_image", vae_path="", **over) -> CanvasTrainConfig:
    overrides = {
        "task": task, "vae": {"path": str(vae_path), "config": fakes.TINY_VAE}, "unet": fakes.TINY_UNET,
        "text_encoder": {"max_length": 12}, "data": {"image_size": 16, "caption_dropout": 0.2},
        "sampling": {"num_steps": 3, "prompts": ["a red square at the top left", "a blue square at the bottom right"]},
        "train": {"steps": 6, "batch_size": 4, "log_every": 1, "run_dir": str(run_dir), "progress": False,
                  "tensorboard": False, "checkpoint": {"every": 0, "async_save": False}},
        "optim": {"learning_rate": 2e-3},
    }
    for key, value in over.items():
        node = overrides
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config_lib.from_dict(CanvasTrainConfig, overrides)


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory):
    """A random tiny AutoencoderKL saved in the diffusers folder format."""
    folder = tmp_path_factory.mktemp("tiny_vae")
    save_vae(AutoencoderKL(fakes.TINY_VAE, rngs=nnx.Rngs(3)), folder)
    return str(folder)


@pytest.fixture(scope="session")
def t2i_run(tmp_path_factory, tiny_vae_dir):
    """A finished tiny text-to-image run folder (EMA on), shared by the inpaint and export tests."""
    from canvas_jax.train.run import train

    run_dir = tmp_path_factory.mktemp("t2i_run")
    cfg = tiny_config(run_dir, vae_path=tiny_vae_dir, **{"train.ema_decay": 0.9, "train.steps": 4})
    train(cfg, data_fn=fakes.data_fn())
    return str(run_dir)


def clip_config(run_dir, **over) -> CanvasTrainConfig:
    """A tiny ``task=clip`` config on the fakes data (16 px, 12 distinct captions, a gallery of 16 test images)."""
    clip = {"task": "clip", "data.caption_dropout": 0.0, "clip.channels": [8, 16], "clip.embed_dim": 16,
            "clip.text_hidden": 32, "clip.eval_examples": 16, "optim.learning_rate": 3e-3, "train.steps": 8,
            "train.batch_size": 16}
    return tiny_config(run_dir, **{**clip, **over})


@pytest.fixture(scope="session")
def clip_run(tmp_path_factory):
    """A finished tiny ``task=clip`` run (12 steps, EMA on): (run folder, its task, eval metrics of the initial
    state, the loop's last metrics)."""
    from canvas_jax.train.hooks import make_hooks
    from canvas_jax.train.tasks import make_task
    from core_jax.loop import Trainer

    run_dir = tmp_path_factory.mktemp("clip_run")
    cfg = clip_config(run_dir, **{"train.ema_decay": 0.9, "train.steps": 12})
    task = make_task(cfg, data_fn=fakes.data_fn())
    trainer = Trainer(task, cfg, hooks=make_hooks(task, cfg))
    before = trainer.evaluate(trainer.init_state())
    _, last = trainer.fit()
    return str(run_dir), task, before, last


RL_TRAIN_PROMPTS = ["a small red square at the top left", "a large blue square at the bottom right",
                    "a small green square at the top right"]
RL_EVAL_PROMPTS = ["a large red circle at the center", "a small blue diamond at the bottom left"]


def rl_overrides(folder, init_from) -> dict:
    """A tiny ``task=rl`` run on ``init_from`` (prompt files written into ``folder``): rollouts of 8 (4 per
    prompt), 2 PPO epochs of minibatches of 4 (4 steps per rollout), 3 DDIM steps, two rewards, a KL term; the
    held-out evaluation samples 8 too (2 prompts x 4: the rollout's compiled program)."""
    from pathlib import Path

    Path(folder, "train_prompts.txt").write_text("\n".join(RL_TRAIN_PROMPTS) + "\n")
    Path(folder, "eval_prompts.txt").write_text("\n".join(RL_EVAL_PROMPTS) + "\n")
    return {"task": "rl", "init_from": str(init_from), "data.dataset": "fake", "sampling.prompts": [],
            "rl.train_prompts": str(Path(folder, "train_prompts.txt")),
            "rl.eval_prompts": str(Path(folder, "eval_prompts.txt")), "rl.rewards": "checker=1,diversity=0.5",
            "rl.rollout_size": 8, "rl.per_prompt": 4, "rl.inner_epochs": 2, "rl.num_steps": 3,
            "rl.guidance_scale": 2.0, "rl.clip_range": 0.2, "rl.stats_buffer": 8, "rl.stats_min_count": 4,
            "rl.kl_weight": 0.1, "rl.eval_per_prompt": 4, "lora.rank": 2, "train.batch_size": 4,
            "optim.learning_rate": 3e-3}
