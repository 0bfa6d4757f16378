"""``canvas-jax train --config FILE [key.sub=value ...]``: run one canvas training task on the shared loop.

``add_train_arguments(parser)`` adds its arguments; ``run_train(args)`` runs it (exit code). With
``task=text_to_image`` and ``vae.pretrain_steps > 0``, a VAE is trained into ``vae.path`` first until that
folder holds one trained to ``vae.pretrain_steps`` (the embedded Shapes default needs no pretrained weights
at all). A SIGTERM/SIGINT during pretraining stops the whole command (exit 143/130, after a checkpoint); the
next launch finishes the VAE from that checkpoint, then trains the diffusion model.
"""

from __future__ import annotations

import argparse
import copy
import json
import os

import jax

from canvas_jax.config import CanvasTrainConfig
from canvas_jax.runs import is_run_dir
from canvas_jax.train import preflight
from canvas_jax.train.hooks import make_hooks
from canvas_jax.train.tasks import make_task
from core_jax import config as config_lib
from core_jax import distributed
from core_jax.checkpoint import Checkpointer
from core_jax.loop import Trainer


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML run config (configs/canvas/*.yaml; default: built-in)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides (e.g. train.steps=100 task=vae)")
    distributed.add_flags(p)


def train(cfg: CanvasTrainConfig, *, data_fn=None, extra_hooks=()) -> tuple[dict, dict]:
    """Run ``cfg`` (pretraining its VAE first when asked); returns the loop's (state, last metrics)."""
    if cfg.task == "text_to_image" and cfg.vae.pretrain_steps > 0 and not _vae_pretrained(cfg):
        if not cfg.vae.path:
            raise config_lib.ConfigError("config key 'vae.path': empty, but vae.pretrain_steps > 0 needs a folder "
                                         "to train the VAE into")
        train(vae_pretrain_config(cfg), data_fn=data_fn)  # a signal raises core_jax.stopping.Stopped: no UNet
    task = make_task(cfg, data_fn=data_fn)
    hooks = make_hooks(task, cfg, prompts=_default_prompts(cfg)) + list(extra_hooks)
    return Trainer(task, cfg, hooks=hooks).fit()


def vae_pretrain_config(cfg: CanvasTrainConfig) -> CanvasTrainConfig:
    """The ``task=vae`` run that pretrains ``cfg``'s VAE into ``vae.path`` (``vae.pretrain_steps`` steps)."""
    vae_cfg = copy.deepcopy(cfg)
    vae_cfg.task = "vae"
    vae_cfg.train.steps, vae_cfg.train.run_dir, vae_cfg.train.ema_decay = cfg.vae.pretrain_steps, cfg.vae.path, None
    vae_cfg.train.best_metric = None
    if cfg.vae.pretrain_learning_rate is not None:
        vae_cfg.optim.learning_rate = cfg.vae.pretrain_learning_rate
    return vae_cfg


def _vae_pretrained(cfg) -> bool:
    """Whether ``vae.path`` holds a VAE run with a checkpoint at ``vae.pretrain_steps`` or later (one stopped
    part way is resumed, not used)."""
    if not cfg.vae.path or not is_run_dir(cfg.vae.path):
        return False
    checkpoints = Checkpointer(os.path.join(cfg.vae.path, "checkpoints"))
    try:
        step = checkpoints.latest_step()
    finally:
        checkpoints.close()
    return step is not None and step >= cfg.vae.pretrain_steps


def _default_prompts(cfg) -> list[str]:
    """Shapes prompts for the sample grids when the config lists none (seen and held-out ones)."""
    if cfg.sampling.prompts or cfg.data.dataset != "shapes":
        return []
    try:
        from canvas_jax.data import shapes
    except ImportError:
        return []
    n = max(cfg.sampling.num_prompts, 2)
    seen = shapes.sample_prompts(n - n // 4, seed=cfg.sampling.seed)
    held = shapes.sample_prompts(n // 4, heldout=True, seed=cfg.sampling.seed)
    return [caption for caption, _ in seen + held]


@config_lib.exit_on_error
def run_train(args) -> int:
    cfg = config_lib.load(CanvasTrainConfig, args.config, args.overrides)
    preflight.check(cfg)  # text encoder, data, VAE / init_from found: fail now, not after the VAE pretraining
    distributed.initialize_from_args(args)
    state, metrics = train(cfg)
    if jax.process_index() == 0:
        print(json.dumps({"task": cfg.task, "run_dir": cfg.train.run_dir, "step": int(jax.device_get(state["step"])),
                          **metrics}))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m canvas_jax.train.run", description=__doc__.splitlines()[0])
    add_train_arguments(p)
    return run_train(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
