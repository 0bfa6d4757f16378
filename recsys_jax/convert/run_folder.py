"""Write a run folder (what ``recsys-jax train`` leaves) around a model built elsewhere, e.g. imported.

The folder holds ``config.yaml`` (the defaults, with this model's section and ``data.max_len``),
``checkpoints/0`` (the train state of a fresh run with these weights as ``params``, and as ``ema``
when the defaults keep one), ``dataset/`` (the id maps, and ``source.json``) and ``converted.json``
(where the weights came from), so :class:`~recsys_jax.Retriever`, ``recsys-jax recommend`` and
``recsys-jax eval`` (with ``data.dir=`` a dataset in the same ids, or the dataset given here) load it.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
from flax import nnx

from core_jax import config as config_lib
from core_jax.loop import Trainer
from core_jax.mesh import make_mesh
from recsys_jax.data.sequences import IdMap
from recsys_jax.train.config import RecsysConfig, validate
from recsys_jax.train.restore import serving_mesh_config
from recsys_jax.train.task import RUN_DATASET_DIR, RecsysTask, save_run_dataset


def write_run(model: nnx.Module, name: str, item_map: IdMap, out: str | os.PathLike, *, max_len: int,
              dataset: str | os.PathLike | None = None, source: dict | None = None, overwrite: bool = False) -> str:
    """Save ``model`` (a ``name`` model: "hstu" | "sasrec" | "two_tower") as run folder ``out``; returns its path."""
    out = os.path.abspath(os.fspath(out))
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise FileExistsError(f"output folder '{out}' exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(out)
    if len(item_map) != model.num_items:
        raise ValueError(f"id map has {len(item_map)} items but the model has {model.num_items}")
    cfg = RecsysConfig()
    cfg.model.name = name
    setattr(cfg.model, name, model.cfg)
    cfg.data.max_len = int(max_len)
    cfg.data.dir = None if dataset is None else os.path.abspath(os.fspath(dataset))
    cfg.train.run_dir = out
    cfg.mesh = serving_mesh_config(cfg)
    validate(cfg)
    loaded = None
    if dataset is not None:
        from recsys_jax.data.loader import load_dataset

        loaded = load_dataset(os.fspath(dataset))
    trainer = Trainer(RecsysTask(cfg, loaded, num_items=model.num_items), cfg, mesh=make_mesh(cfg.mesh))
    state = trainer.init_state()
    _, params, _ = nnx.split(model, trainer.trainable, ...)
    params = jax.device_put(params, trainer.state_shardings["params"])
    state["params"] = params
    if "ema" in state:
        state["ema"] = params
    try:
        trainer.checkpointer.save(0, state, config=config_lib.to_dict(cfg), force=True)
    finally:
        trainer.checkpointer.close()
        if trainer.best_checkpointer is not None:
            trainer.best_checkpointer.close()
    config_lib.save(cfg, os.path.join(out, "config.yaml"))
    if loaded is not None:
        save_run_dataset(loaded, out)
    else:
        folder = os.path.join(out, RUN_DATASET_DIR)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "id_maps.json"), "w") as f:
            json.dump({"items": item_map.to_json()}, f)
        with open(os.path.join(folder, "source.json"), "w") as f:
            json.dump({"path": None, "num_items": model.num_items, "num_users": 0, "has_timestamps": True}, f)
    with open(os.path.join(out, "converted.json"), "w") as f:
        json.dump(source or {}, f, indent=1)
    return out
