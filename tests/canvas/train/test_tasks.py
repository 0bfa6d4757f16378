"""Each canvas task trains on the shared loop: its loss goes down over a few tiny steps."""

import os

import jax
import numpy as np
from flax import nnx

import fakes
from conftest import tiny_config

from canvas_jax.train.hooks import make_hooks
from canvas_jax.train.tasks import make_task
from core_jax.loop import Trainer
from core_jax.metrics import read_jsonl


def _fit(cfg):
    task = make_task(cfg, data_fn=fakes.data_fn())
    trainer = Trainer(task, cfg, hooks=make_hooks(task, cfg))
    before = trainer.evaluate(trainer.init_state())
    state, last = trainer.fit()
    return task, trainer, state, before, last


def test_vae_loss_decreases(tmp_path):
    cfg = tiny_config(tmp_path / "vae", task="vae", **{"train.steps": 12})
    _, _, _, before, last = _fit(cfg)
    assert last["eval_recon_mse"] < 0.8 * before["recon_mse"], (before, last)
    losses = [r["loss"] for r in read_jsonl(tmp_path / "vae" / "metrics.jsonl", "train")]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert last["eval_latent_ms"] > 0
    assert os.path.getsize(tmp_path / "vae" / "loss.png") > 0


def test_text_to_image_loss_decreases_and_trains_only_the_unet(tmp_path, tiny_vae_dir):
    cfg = tiny_config(tmp_path / "t2i", vae_path=tiny_vae_dir,
                      **{"train.steps": 5, "train.ema_decay": 0.5, "sampling.prompts": []})
    task, trainer, state, before, last = _fit(cfg)
    assert last["eval_loss"] < before["loss"], (before, last)
    # only the UNet is trained: params, optimizer moments and EMA hold UNet leaves only
    assert set(state["params"].keys()) == {"unet"}
    n_unet = sum(x.size for x in jax.tree.leaves(state["params"]))
    model = trainer.model(state)
    assert n_unet == sum(x.size for x in jax.tree.leaves(nnx.state(model.unet, nnx.Param)))
    assert model.text_encoder is None  # cached: the encoder is not part of the step
    opt_sizes = sorted({x.size for x in jax.tree.leaves(state["opt"]) if x.ndim > 0})
    assert max(opt_sizes) <= max(x.size for x in jax.tree.leaves(state["params"]))
    assert sum(x.size for x in jax.tree.leaves(state["ema"])) == n_unet
    assert os.path.exists(tmp_path / "t2i" / "loss.png")


def test_inpaint_loss_decreases(tmp_path, t2i_run):
    cfg = tiny_config(tmp_path / "inpaint", task="inpaint", init_from=t2i_run,
                      **{"train.steps": 6, "optim.learning_rate": 3e-3})
    task, trainer, state, before, last = _fit(cfg)
    assert task.unet_config()["in_channels"] == 9
    assert last["eval_loss"] < before["loss"], (before, last)


def test_text_to_image_pretrains_its_vae_first(tmp_path):
    from canvas_jax.train.run import train
    from canvas_jax.runs import load_config

    vae_dir = tmp_path / "vae"
    cfg = tiny_config(tmp_path / "t2i", vae_path=vae_dir, **{
        "train.steps": 2, "sampling.prompts": [], "vae.pretrain_steps": 3, "vae.pretrain_learning_rate": 4e-3,
        "vae.cache_latents": True})
    train(cfg, data_fn=fakes.data_fn())
    vae_cfg = load_config(vae_dir)
    assert (vae_cfg.task, vae_cfg.train.steps, vae_cfg.optim.learning_rate) == ("vae", 3, 4e-3)
    assert [r["step"] for r in read_jsonl(vae_dir / "metrics.jsonl", "train")][-1] == 3
    assert load_config(tmp_path / "t2i").optim.learning_rate == cfg.optim.learning_rate
    assert [r["step"] for r in read_jsonl(tmp_path / "t2i" / "metrics.jsonl", "train")][-1] == 2
