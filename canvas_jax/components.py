"""The components of a pipeline (UNet, VAE, text encoders, tokenizers, scheduler config), read from and written to
folders: diffusers folders and our own format. (A training run folder is read by :mod:`canvas_jax.runs`.)

A diffusers folder has ``model_index.json`` and ``unet/ vae/ text_encoder/ tokenizer/ scheduler/`` (SDXL adds
``text_encoder_2/ tokenizer_2/``), weights in safetensors. Our format keeps the same sub-folder names with,
for every model, ``config.json`` plus ``params/`` (an Orbax checkpoint of the flat parameter dict), the
tokenizer and scheduler folders copied verbatim, and ``canvas_jax_index.json``::

    {"format": "canvas_jax", "version": 1, "components": {"unet": "UNet2DConditionModel", ...},
     "model_index": {... the diffusers model_index.json, kept for the way back ...}}
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from canvas_jax.convert.diffusers_models import load_unet, load_vae
from canvas_jax.convert.text_encoders import load_clip_text
from canvas_jax.errors import InputError
from core_jax.text.bert import BertModel
from canvas_jax.models.clip import CLIPTextModel, CLIPTextModelWithProjection
from core_jax.text.minilm import load_bert
from core_jax.text.tokenizer import Tokenizer
from canvas_jax.models.unet import UNet2DConditionModel
from canvas_jax.models.vae import AutoencoderKL

INDEX_NAME = "canvas_jax_index.json"
DIFFUSERS_INDEX = "model_index.json"
FORMAT, VERSION = "canvas_jax", 1
MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")
TOKENIZERS = ("tokenizer", "tokenizer_2")
CLASSES = {"UNet2DConditionModel": UNet2DConditionModel, "AutoencoderKL": AutoencoderKL,
           "CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection,
           "BertModel": BertModel}
PARAMS_DIR = "params"


@dataclasses.dataclass
class Components:
    """Everything a pipeline is made of, loaded from one folder."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel | BertModel
    tokenizer: Tokenizer
    scheduler_config: dict[str, Any]
    model_index: dict[str, Any]
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: Tokenizer | None = None

    def models(self) -> dict[str, nnx.Module]:
        return {n: getattr(self, n) for n in MODELS if getattr(self, n) is not None}


def detect_format(path: str | os.PathLike) -> str:
    """``"canvas_jax"``, ``"diffusers"`` or ``"run"``; a clear FileNotFoundError for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        return "run"
    if (path / INDEX_NAME).is_file():
        return FORMAT
    if (path / DIFFUSERS_INDEX).is_file():
        return "diffusers"
    raise FileNotFoundError(f"{path} is not a pipeline folder: expected {DIFFUSERS_INDEX} (diffusers format), "
                            f"{INDEX_NAME} (canvas_jax format) or config.yaml + checkpoints/ (a training run)")


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return json.loads(path.read_text(encoding="utf-8"))


def _class_of(model_index: dict, name: str) -> str | None:
    entry = model_index.get(name)
    return entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None


def component_classes(path: Path, fmt: str) -> dict[str, str]:
    """Model component name -> our class name, for the models the folder holds."""
    if fmt == FORMAT:
        classes = read_json(path / INDEX_NAME)["components"]
    else:
        index = read_json(path / DIFFUSERS_INDEX)
        classes = {n: _class_of(index, n) for n in MODELS if _class_of(index, n)}
    unknown = {n: c for n, c in classes.items() if c not in CLASSES}
    if unknown:
        raise InputError(f"{path}: unsupported component classes {unknown}; expected one of {sorted(CLASSES)}")
    for needed in ("unet", "vae", "text_encoder"):
        if needed not in classes:
            raise InputError(f"{path}: the pipeline has no {needed!r} component (this pipeline needs unet, vae and "
                             "text_encoder)")
    return classes


def model_index(path: Path) -> dict:
    fmt = detect_format(path)
    return read_json(path / INDEX_NAME)["model_index"] if fmt == FORMAT else read_json(path / DIFFUSERS_INDEX)


def _flat_state(module: nnx.Module) -> list[tuple[str, nnx.Variable]]:
    return [(".".join(str(p) for p in path), var) for path, var in nnx.to_flat_state(nnx.state(module))]


def module_config(module: nnx.Module) -> dict:
    if isinstance(module, BertModel):
        return {**module.config.to_dict(), "_add_pooling_layer": module.pooler is not None}
    if isinstance(module, CLIPTextModel):
        return module.config.to_dict()
    return {k: v for k, v in module.config.items()}


def save_module(module: nnx.Module, folder: str | os.PathLike) -> Path:
    """Our format for one model: ``config.json`` (with ``_class_name``) and ``params/`` (Orbax, float32)."""
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    config = module_json(module)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=list) + "\n")
    flat = {k: np.asarray(jax.device_get(v[...]), np.float32) for k, v in _flat_state(module)}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(folder / PARAMS_DIR, flat, force=True)
    checkpointer.wait_until_finished()
    return folder


def module_json(module: nnx.Module) -> dict:
    """A model's config as our format writes it: the model's config plus ``_class_name``."""
    return {**module_config(module), "_class_name": type(module).__name__}


def build_module(config: dict, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32) -> nnx.Module:
    """A model (fresh weights) from its :func:`module_json` config."""
    name = config.get("_class_name")
    if name not in CLASSES:
        raise InputError(f"model config: _class_name={name!r}, expected one of {sorted(CLASSES)}")
    cls = CLASSES[name]
    cfg = {k: v for k, v in config.items() if k != "_class_name"} if cls in (UNet2DConditionModel, AutoencoderKL) \
        else dict(config)
    extra = {}
    if cls is BertModel:
        extra["add_pooling_layer"] = bool(cfg.pop("_add_pooling_layer", True))
    return cls(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype, **extra)


def load_module(folder: str | os.PathLike, *, dtype=jnp.float32, param_dtype=jnp.float32) -> nnx.Module:
    """A model saved by :func:`save_module`; parameters restored in ``param_dtype``."""
    folder = Path(folder).absolute()
    config = read_json(folder / "config.json")
    name = config.get("_class_name")
    if name not in CLASSES:
        raise InputError(f"{folder / 'config.json'}: _class_name={name!r}, expected one of {sorted(CLASSES)}")
    if not (folder / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"{folder / PARAMS_DIR} not found: expected the Orbax checkpoint of {name}")
    module = nnx.eval_shape(lambda: build_module(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
    flat = _flat_state(module)
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat}
    checkpointer = ocp.StandardCheckpointer()
    try:
        restored = checkpointer.restore(folder / PARAMS_DIR, abstract)
    except (ValueError, KeyError) as err:
        raise InputError(f"{folder / PARAMS_DIR}: the checkpoint does not match {name} built from its config.json: "
                         f"{err}") from err
    for key, var in flat:
        var.set_value(jnp.asarray(restored[key], var.dtype))
    return module


def load_components(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=jnp.float32) -> Components:
    """All components of a diffusers or canvas_jax pipeline folder (a training run folder:
    :func:`canvas_jax.runs.run_components`)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "run":
        raise InputError(f"{path} is a training run folder: load it with canvas_jax.Pipeline.from_pretrained or "
                         "canvas_jax.runs.run_components; export it with canvas_jax.train.export_pipeline")
    classes = component_classes(path, fmt)
    models: dict[str, nnx.Module] = {}
    for name, cls_name in classes.items():
        if fmt == FORMAT:
            models[name] = load_module(path / name, dtype=dtype, param_dtype=param_dtype)
        elif name == "unet":
            models[name] = load_unet(path / name, dtype=dtype, param_dtype=param_dtype)
        elif name == "vae":
            models[name] = load_vae(path / name, dtype=dtype, param_dtype=param_dtype)
        elif cls_name == "BertModel":
            models[name] = load_bert(path / name, dtype=dtype, param_dtype=param_dtype)
        else:
            models[name] = load_clip_text(path / name, with_projection=cls_name == "CLIPTextModelWithProjection",
                                          dtype=dtype, param_dtype=param_dtype)
    tokenizers = {n: Tokenizer.from_folder(path / n) for n in TOKENIZERS if (path / n).is_dir()}
    if "tokenizer" not in tokenizers:
        raise FileNotFoundError(f"{path / 'tokenizer'} not found: the pipeline needs its tokenizer files")
    if "text_encoder_2" in models and "tokenizer_2" not in tokenizers:
        raise FileNotFoundError(f"{path / 'tokenizer_2'} not found: text_encoder_2 needs its tokenizer")
    scheduler_config = read_json(path / "scheduler" / "scheduler_config.json")
    return Components(**models, **tokenizers, scheduler_config=scheduler_config, model_index=model_index(path))
