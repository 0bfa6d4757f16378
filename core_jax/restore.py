"""Open a training run folder, for any model package: its saved config and a checkpoint on a mesh.

A run folder (``train.run_dir``) holds ``config.yaml`` (the resolved config), ``checkpoints/`` (the latest N)
and, with ``train.best_metric``, ``best/``. :func:`restore_run` rebuilds the state's structure from the
package's task (only ``task.create_model`` is called: no data is read) and restores a checkpoint into it,
whatever mesh or process count the run trained on::

    cfg = load_run_config("runs/x", MyConfig)
    run = restore_run(cfg, MyTask(cfg))
    model = run.model()                      # the EMA weights when the run kept them
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import jax

from core_jax import config as config_lib
from core_jax.checkpoint import CheckpointConfig, Checkpointer
from core_jax.loop import Trainer
from core_jax.mesh import batch_divisor, make_mesh

T = TypeVar("T")
WHICH = ("auto", "best", "latest")


def load_run_config(run_dir: str | os.PathLike, schema: type[T], overrides: Sequence[str] = ()) -> T:
    """The config a run saved (``RUN_DIR/config.yaml``) with ``overrides`` applied; ``train.run_dir`` is set to
    ``run_dir`` (the folder may have moved since training)."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run folder '{run_dir}' not found")
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{run_dir}' is not a training run folder: it has no config.yaml (expected the "
                                "train.run_dir of a training run, with config.yaml and checkpoints/)")
    cfg = config_lib.load(schema, path, overrides)
    cfg.train.run_dir = run_dir
    return cfg


def checkpoint_folder(run_dir: str | os.PathLike, which: str = "auto") -> tuple[str, str]:
    """``(folder, which)``: ``RUN_DIR/best`` or ``RUN_DIR/checkpoints``; ``"auto"`` is best when there is one."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    run_dir = os.fspath(run_dir)
    best, latest = os.path.join(run_dir, "best"), os.path.join(run_dir, "checkpoints")

    def has_steps(d):
        return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))

    if which == "auto":
        which = "best" if has_steps(best) else "latest"
    folder = best if which == "best" else latest
    if not has_steps(folder):
        hint = " (the run has no best checkpoint: train with train.best_metric set, or use the latest)" \
            if which == "best" else ""
        raise FileNotFoundError(f"no {which} checkpoint in '{folder}'{hint}")
    return folder, which


@dataclasses.dataclass
class RestoredRun:
    cfg: Any
    task: Any
    trainer: Trainer
    state: dict
    step: int
    which: str  # "best" or "latest"

    def model(self, *, ema: bool = True):
        """The nnx model of the restored state (its EMA weights, when the run kept them, with ``ema=True``)."""
        return self.trainer.model(self.state, ema=ema)


def restore_run(cfg, task, *, which: str = "auto", step: int | None = None, mesh=None) -> RestoredRun:
    """Restore checkpoint ``step`` (default: the newest) of ``which`` ("best", "latest", or "auto": best when
    there is one) of the run in ``cfg.train.run_dir`` into ``task``'s model structure on ``mesh`` (default:
    the mesh of ``cfg.mesh``)."""
    run_dir = cfg.train.run_dir
    folder, which = checkpoint_folder(run_dir, which)
    mesh = make_mesh(cfg.mesh) if mesh is None else mesh
    # the train batch only has to suit this mesh and process count for the Trainer to build (no batch is read)
    cfg.train.grad_accum_steps = 1
    div = math.lcm(batch_divisor(mesh), jax.process_count())
    cfg.train.batch_size = -(-cfg.train.batch_size // div) * div
    trainer = Trainer(task, cfg, mesh=mesh)
    for c in (trainer.checkpointer, trainer.best_checkpointer):  # restoring reads `folder` on its own
        if c is not None:
            c.close()
    ckpt = Checkpointer(folder, CheckpointConfig(keep=1 << 30, async_save=False))
    try:
        if step is not None and step not in ckpt.manager.all_steps():
            raise FileNotFoundError(f"no checkpoint of step {step} in '{folder}' (have {ckpt.manager.all_steps()})")
        restored_step, state = ckpt.restore(trainer.abstract_state, step=step)
    finally:
        ckpt.close()
    return RestoredRun(cfg, task, trainer, state, int(restored_step), which)
