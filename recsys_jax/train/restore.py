"""Open a finished (or running) training run: its config, and its best or latest checkpoint.

A run folder (``train.run_dir``) holds ``config.yaml``, ``checkpoints/`` (latest N), ``best/`` (with
``train.best_metric``), ``best.json`` and ``dataset/`` (id maps, counts, side info: see
:func:`recsys_jax.train.task.save_run_dataset`). Restoring builds the state on a mesh over the local
devices with the item table row-sharded (``mesh.fsdp=-1``), whatever mesh the run trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

from core_jax.checkpoint import CheckpointConfig, Checkpointer
from core_jax.config import ConfigError
from core_jax.loop import Trainer
from core_jax.mesh import MeshConfig, batch_divisor, make_mesh
from recsys_jax.train.config import RecsysConfig, load_config
from recsys_jax.train.task import RUN_DATASET_DIR, RecsysTask

WHICH = ("auto", "best", "latest")


def load_run_config(run_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> RecsysConfig:
    """The resolved config the run saved (``RUN_DIR/config.yaml``), with ``overrides`` applied."""
    run_dir = os.fspath(run_dir)
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run folder '{run_dir}' not found")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{run_dir}' is not a training run: it has no config.yaml "
                                "(expected the train.run_dir of 'recsys-jax train')")
    cfg = load_config(path, overrides)
    cfg.train.run_dir = run_dir  # the folder may have moved since training
    return cfg


def run_dataset_info(run_dir: str | os.PathLike) -> dict:
    """``RUN_DIR/dataset/source.json``: the dataset path, num_items, num_users, has_timestamps."""
    path = os.path.join(os.fspath(run_dir), RUN_DATASET_DIR, "source.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{path}' not found: the run has not started training yet")
    with open(path) as f:
        return json.load(f)


def _checkpoint_dir(run_dir: str, which: str) -> tuple[str, str]:
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    best, latest = os.path.join(run_dir, "best"), os.path.join(run_dir, "checkpoints")

    def has_steps(d):
        return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))

    if which == "auto":
        which = "best" if has_steps(best) else "latest"
    folder = best if which == "best" else latest
    if not has_steps(folder):
        hint = " (the run has no best checkpoint: train with train.best_metric set, or use --which latest)" \
            if which == "best" else ""
        raise FileNotFoundError(f"no {which} checkpoint in '{folder}'{hint}")
    return folder, which


def serving_mesh_config(cfg: RecsysConfig) -> MeshConfig:
    """All local devices on the ``fsdp`` axis: the item table row-sharded, the batch split."""
    return MeshConfig(data=1, fsdp=-1, tensor=1, rules=cfg.mesh.rules)


@dataclasses.dataclass
class RestoredRun:
    cfg: RecsysConfig
    task: RecsysTask
    trainer: Trainer
    state: dict
    step: int
    which: str  # "best" or "latest"

    def model(self):
        """The nnx model of the restored state (EMA weights when the run kept them)."""
        return self.trainer.model(self.state, ema=True)


def restore_run(run_dir: str | os.PathLike, *, which: str = "auto", overrides: Sequence[str] = (),
                mesh=None, dataset=None, eval_split: str | None = None) -> RestoredRun:
    """Restore the ``which`` checkpoint ("best", "latest", or "auto": best when there is one) of a run."""
    run_dir = os.fspath(run_dir)
    cfg = load_run_config(run_dir, overrides)
    folder, which = _checkpoint_dir(run_dir, which)
    if mesh is None:
        if not any(o.startswith("mesh.") for o in overrides):
            cfg.mesh = serving_mesh_config(cfg)
        mesh = make_mesh(cfg.mesh)
    # the train batch only has to suit this mesh for the Trainer to build (restoring uses no batch)
    cfg.train.grad_accum_steps = 1
    div = batch_divisor(mesh)
    cfg.train.batch_size = -(-cfg.train.batch_size // div) * div
    num_items = None if dataset is not None else run_dataset_info(run_dir)["num_items"]
    task = RecsysTask(cfg, dataset, num_items=num_items, eval_split=eval_split)
    if dataset is not None and dataset.num_items != task.num_items:
        raise ConfigError(f"dataset has {dataset.num_items} items but the run trained on {task.num_items}")
    trainer = Trainer(task, cfg, mesh=mesh)
    ckpt = Checkpointer(folder, CheckpointConfig(keep=1 << 30, async_save=False))
    try:
        step, state = ckpt.restore(trainer.abstract_state)
    finally:
        ckpt.close()
    return RestoredRun(cfg, task, trainer, state, int(step), which)
