"""Orbax checkpointing of a whole run: train state, Grain iterator state, config JSON, step.

Saving is async with keep-last-N. Restoring takes an abstract state whose leaves carry the
shardings of the *current* mesh, so a checkpoint written on one mesh or process count restores into
another. The data iterator state is per process; it is restored only when the process count matches.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CheckpointConfig:
    every: int = 100  # steps between checkpoints (0 = only at the end and on SIGTERM/SIGINT)
    keep: int = 3  # keep the last N
    async_save: bool = True


class Checkpointer:
    """One run's checkpoints under ``directory`` (items: state, data, config)."""

    def __init__(self, directory: str | os.PathLike, cfg: CheckpointConfig | None = None):
        cfg = cfg or CheckpointConfig()
        self.directory = os.path.abspath(os.fspath(directory))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=cfg.keep, enable_async_checkpointing=cfg.async_save, create=True,
                # A run's two managers (checkpoints/ and best/) may save the same step at once; Orbax names
                # its cross-process barriers by step, so without a per-folder prefix they collide (a
                # "barrier already ongoing" error, then a hang) when more than one process takes part.
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=os.path.basename(self.directory)),
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iter=None, config: dict | None = None, force: bool = False) -> bool:
        """Save (asynchronously) unless this step is already saved; returns whether a save started."""
        if step in self.manager.all_steps():
            return False
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        if config is not None:
            items["config"] = ocp.args.JsonSave(config)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state, data_iter=None, step: int | None = None):
        """Restore ``(step, state)`` into the shardings of ``abstract_state``; the iterator in place."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None and self._has_data_for_this_process(step):
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        elif data_iter is not None:
            log.warning("checkpoint %s has no data-iterator state for process %d of %d: the data order restarts",
                        step, jax.process_index(), jax.process_count())
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return step, restored["state"]

    def restore_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def _has_data_for_this_process(self, step: int) -> bool:
        data_dir = os.path.join(self.directory, str(step), "data")
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        return os.path.exists(os.path.join(data_dir, name))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
