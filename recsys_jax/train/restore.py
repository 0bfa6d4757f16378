"""Open a finished (or running) training run: its config, and its best or latest checkpoint.

A run folder (``train.run_dir``) holds ``config.yaml``, ``checkpoints/`` (latest N), ``best/`` (with
``train.best_metric``), ``best.json`` and ``dataset/`` (id maps, counts, side info: see
:func:`recsys_jax.train.task.save_run_dataset`). Restoring builds the state on a mesh over the local
devices with the item table row-sharded (``mesh.fsdp=-1``), whatever mesh the run trained on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from core_jax import restore as core_restore
from core_jax.config import ConfigError
from core_jax.mesh import MeshConfig, make_mesh
from core_jax.restore import RestoredRun
from recsys_jax.train.config import RecsysConfig, validate
from recsys_jax.train.task import RUN_DATASET_DIR, make_task

__all__ = ["RestoredRun", "load_run_config", "restore_run", "run_dataset_info", "serving_mesh_config"]


def load_run_config(run_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> RecsysConfig:
    """The resolved config the run saved (``RUN_DIR/config.yaml``), with ``overrides`` applied."""
    return validate(core_restore.load_run_config(run_dir, RecsysConfig, overrides))


def run_dataset_info(run_dir: str | os.PathLike) -> dict:
    """``RUN_DIR/dataset/source.json``: the dataset path, num_items, num_users, has_timestamps."""
    path = os.path.join(os.fspath(run_dir), RUN_DATASET_DIR, "source.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{path}' not found: the run has not started training yet")
    with open(path) as f:
        return json.load(f)


def serving_mesh_config(cfg: RecsysConfig) -> MeshConfig:
    """All local devices on the ``fsdp`` axis: the item table row-sharded, the batch split."""
    return MeshConfig(data=1, fsdp=-1, tensor=1, rules=cfg.mesh.rules)


def restore_run(run_dir: str | os.PathLike, *, which: str = "auto", overrides: Sequence[str] = (),
                mesh=None, dataset=None, eval_split: str | None = None) -> RestoredRun:
    """Restore the ``which`` checkpoint ("best", "latest", or "auto": best when there is one) of a run."""
    run_dir = os.fspath(run_dir)
    cfg = load_run_config(run_dir, overrides)
    if mesh is None:
        if not any(o.startswith("mesh.") for o in overrides):
            cfg.mesh = serving_mesh_config(cfg)
        mesh = make_mesh(cfg.mesh)
    num_items = None if dataset is not None else run_dataset_info(run_dir)["num_items"]
    task = make_task(cfg, dataset, num_items=num_items, eval_split=eval_split)
    if dataset is not None and dataset.num_items != task.num_items:
        raise ConfigError(f"dataset has {dataset.num_items} items but the run trained on {task.num_items}")
    return core_restore.restore_run(cfg, task, which=which, mesh=mesh)
