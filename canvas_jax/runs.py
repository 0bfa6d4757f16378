"""Read trained models back out of run folders (``RUN_DIR/config.yaml`` + ``RUN_DIR/checkpoints``)."""

from __future__ import annotations

import os
from pathlib import Path

from flax import nnx

from core_jax import config as config_lib
from core_jax.metrics import read_jsonl


def is_run_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "config.yaml").is_file() and (p / "checkpoints").is_dir()


def load_config(run_dir: str | os.PathLike):
    from canvas_jax.config import CanvasTrainConfig

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run folder: no config.yaml (expected the folder a "
                                "`canvas-jax train` run wrote, with config.yaml and checkpoints/)")
    return config_lib.load(CanvasTrainConfig, str(path))


def restore_model(run_dir: str | os.PathLike, *, ema: bool = True, step: int | None = None):
    """``(config, model)`` of a run's latest (or ``step``) checkpoint; the EMA weights when the run kept them."""
    cfg, _, model = restore_run(run_dir, ema=ema, step=step)
    return cfg, model


def restore_run(run_dir: str | os.PathLike, *, ema: bool = True, step: int | None = None):
    """``(config, task, model)`` of a run's checkpoint (the task knows the frozen parts' sources)."""
    from canvas_jax.train.tasks import make_task
    from core_jax.loop import Trainer

    cfg = load_config(run_dir)
    cfg.train.run_dir = str(run_dir)
    task = make_task(cfg)
    trainer = Trainer(task, cfg)
    if trainer.checkpointer.latest_step() is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint in {trainer.checkpointer.directory}")
    _, state = trainer.checkpointer.restore(trainer.abstract_state, step=step)
    trainer.checkpointer.close()
    return cfg, task, trainer.model(state, ema=ema)


def latent_rms(run_dir: str | os.PathLike) -> float | None:
    """The RMS of a VAE run's latents (from its last eval ``latent_ms``, the mean square), or None."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [r for r in read_jsonl(path, "eval") if "latent_ms" in r]
    return float(rows[-1]["latent_ms"]) ** 0.5 if rows and rows[-1]["latent_ms"] > 0 else None


def load_vae(path: str | os.PathLike):
    """A trained AutoencoderKL from a ``task=vae`` run folder or a diffusers vae / pipeline folder.

    A VAE trained here gets ``scaling_factor = 1 / latent_rms`` from its last evaluation (unit-variance
    latents for the diffusion model), as SD's 0.18215 was measured for its VAE.
    """
    from canvas_jax.convert.diffusers_models import load_vae as load_diffusers_vae

    if not path:
        raise ValueError("vae.path is empty: the diffusion tasks need a trained VAE (a `task=vae` run folder or a "
                         "diffusers vae folder; or set vae.pretrain_steps to train one first)")
    if is_run_dir(path):
        cfg, vae = restore_model(path)
        if cfg.task != "vae":
            raise ValueError(f"vae.path={str(path)!r} is a task={cfg.task!r} run; expected a task=vae run")
        rms = latent_rms(path)
        if rms:
            vae.config = {**vae.config, "scaling_factor": 1.0 / rms}
        return _as_params(vae)
    if not Path(path).is_dir():
        raise FileNotFoundError(f"vae.path={str(path)!r} does not exist; expected a task=vae run folder or a "
                                "diffusers vae folder")
    return load_diffusers_vae(path)


def _as_params(module: nnx.Module) -> nnx.Module:
    from canvas_jax.models.frozen import unfreeze

    return unfreeze(module)
