"""Check, before anything trains, that a canvas run will find everything it needs.

:func:`check` resolves, without building a model or a dataset: the text encoder (the packaged MiniLM's files,
or a model folder with its weights and tokenizer), the dataset (the packages the Shapes builder needs, or a
dataset folder with a train split), the VAE (``vae.path``: a ``task=vae`` run folder, a diffusers VAE folder,
or a folder to pretrain into), ``init_from`` (``inpaint``, ``finetune``) and the packages a run imports late.
It raises one :class:`PreflightError` naming every missing piece and what to install or set, so that a
missing text encoder fails in seconds instead of after the VAE has pretrained for half an hour.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from canvas_jax import text_conditioning
from canvas_jax.convert.diffusers_models import model_folder
from canvas_jax.runs import is_run_dir, load_config
from canvas_jax.train.init_from import BASE_TASKS
from core_jax.config import ConfigError
from core_jax.model_folder import read_config, weight_files
from core_jax.text.minilm import minilm_folder


class PreflightError(ConfigError):
    """Something a run needs is missing (a package, a folder, a file): the message says what and how to fix it."""


def check(cfg) -> None:
    """Raise :class:`PreflightError` listing everything ``cfg`` (a ``CanvasTrainConfig``) needs but cannot find."""
    problems = _data(cfg) + _packages(cfg)
    if cfg.task == "text_to_image":
        problems += _vae(cfg.vae.path, cfg.vae.pretrain_steps)
    if cfg.task in ("text_to_image", "clip", "reward_model"):
        problems += _text_encoder(cfg.text_encoder.source, "text_encoder.source")
    if cfg.task in ("inpaint", "finetune", "dpo", "ip_adapter", "rl"):
        problems += _init_from(cfg.init_from)
    if problems:
        raise PreflightError(f"task={cfg.task} cannot run: " + "; ".join(problems))


def _import(module: str, install: str) -> list[str]:
    try:
        importlib.import_module(module)
    except ImportError as err:
        return [f"package {module!r} does not load ({err}): {install}"]
    return []


def _packages(cfg) -> list[str]:
    return _import("tensorboardX", "pip install tensorboardX (or set train.tensorboard=false)") \
        if cfg.train.tensorboard else []


def _data(cfg) -> list[str]:
    dataset = cfg.data.dataset
    if dataset == "shapes":  # built under data.dir on first use
        return _import("tensorflow_datasets", "pip install tensorflow-datasets") + _import(
            "array_record", "pip install array-record")
    if not Path(dataset).is_dir():
        return [f"data.dataset={dataset!r} does not exist; expected 'shapes' or a dataset folder written by "
                "`canvas-jax data build`"]
    from core_jax.data import split_names

    try:
        splits = split_names(dataset)
    except Exception as err:  # noqa: BLE001 - tfds raises several kinds for a folder that is no dataset
        return [f"data.dataset={dataset!r} is not a dataset folder ({type(err).__name__}: {err}); expected one "
                "written by `canvas-jax data build`"]
    return [] if "train" in splits else [f"data.dataset={dataset!r} has no train split (splits: {splits})"]


def _text_encoder(source: str, key: str) -> list[str]:
    try:
        text_conditioning.tokenizer_folder(source)
        folder = minilm_folder() if source == "minilm" else Path(source)
        read_config(folder)
        weight_files(folder)
    except (ImportError, FileNotFoundError) as err:
        return [str(err) if repr(source) in str(err) else f"{key}={source!r}: {err}"]
    return []


def _vae(path: str, pretrain_steps: int) -> list[str]:
    if not path:
        return ["vae.path is empty; expected a task=vae run folder or a diffusers VAE folder (or a folder to train "
                "one into, with vae.pretrain_steps > 0)"]
    if is_run_dir(path):
        task = load_config(path).task
        return [] if task == "vae" else [f"vae.path={path!r} is a task={task!r} run; expected a task=vae run"]
    if pretrain_steps > 0:
        return []  # trained into vae.path first
    try:
        model_folder(path, "vae")
    except FileNotFoundError as err:
        return [f"vae.path={path!r}: {err}; expected a task=vae run folder or a diffusers VAE folder (or set "
                "vae.pretrain_steps to train one first)"]
    return []


def _init_from(src: str) -> list[str]:
    if not src:
        return ["init_from is empty; expected a text_to_image run folder or a diffusers pipeline folder"]
    if is_run_dir(src):
        base = load_config(src)
        if base.task not in BASE_TASKS:
            return [f"init_from={src!r} is a task={base.task!r} run; expected one of {BASE_TASKS}"]
        return _vae(base.vae.path, 0) + _text_encoder(base.text_encoder.source, f"{src}: text_encoder.source")
    if not Path(src).is_dir():
        return [f"init_from={src!r} does not exist; expected a text_to_image run folder or a diffusers pipeline "
                "folder"]
    missing = [f"{part}/config.json" for part in ("unet", "vae") if not (Path(src) / part / "config.json").is_file()]
    if missing:
        return [f"init_from={src!r} has no {' or '.join(missing)}; expected a text_to_image run folder or a diffusers "
                "pipeline folder (unet/, vae/, text_encoder/, tokenizer/)"]
    return _text_encoder(str(Path(src) / "text_encoder"), "init_from's text encoder")
