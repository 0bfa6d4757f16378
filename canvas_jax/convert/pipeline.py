"""Whole-pipeline conversion: diffusers folder <-> our format (see :mod:`canvas_jax.components`).

    from_diffusers("sd15/", "sd15_jax/")      # Orbax params + config JSON per model, tokenizers, scheduler, index
    to_diffusers("sd15_jax/", "sd15_back/")   # safetensors + config.json that diffusers' from_pretrained loads
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from canvas_jax.convert.diffusers_models import save_unet, save_vae
from canvas_jax.convert.text_encoders import save_clip_text
from canvas_jax.errors import InputError
from canvas_jax.components import (
    DIFFUSERS_INDEX,
    FORMAT,
    INDEX_NAME,
    TOKENIZERS,
    VERSION,
    Components,
    detect_format,
    load_components,
    save_module,
)

_DIFFUSERS_VERSION = "0.42.1"


def _prepare(dst: Path, overwrite: bool) -> None:
    if dst.exists() and any(dst.iterdir()):
        if not overwrite:
            raise FileExistsError(f"destination {dst} exists and is not empty; choose a new folder (or overwrite=True)")
        shutil.rmtree(dst)
    dst.mkdir(parents=True, exist_ok=True)


def _copy_files(src: Path, dst: Path) -> None:
    for name in (*TOKENIZERS, "scheduler"):
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name, dirs_exist_ok=True)


def from_diffusers(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Convert a diffusers pipeline folder to our format (weights are checked against each model on load)."""
    src, dst = Path(src), Path(dst)
    if detect_format(src) != "diffusers":
        raise InputError(f"{src} is already in {FORMAT} format (it has {INDEX_NAME}); expected a diffusers folder")
    comps = load_components(src)
    _prepare(dst, overwrite)
    classes = {}
    for name, model in comps.models().items():
        save_module(model, dst / name)
        classes[name] = type(model).__name__
    _copy_files(src, dst)
    index = {"format": FORMAT, "version": VERSION, "components": classes, "model_index": comps.model_index}
    (dst / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return dst


def _diffusers_index(comps: Components) -> dict:
    index = dict(comps.model_index)
    index.setdefault("_class_name", "StableDiffusionXLPipeline" if comps.text_encoder_2 is not None
                     else "StableDiffusionPipeline")
    index.setdefault("_diffusers_version", _DIFFUSERS_VERSION)
    for name, model in comps.models().items():
        lib = "transformers" if name.startswith("text_encoder") else "diffusers"
        index[name] = [lib, type(model).__name__]
    for name in TOKENIZERS:
        if getattr(comps, name) is not None:
            index.setdefault(name, ["transformers", "CLIPTokenizer"])
    index.setdefault("scheduler", ["diffusers", comps.scheduler_config.get("_class_name", "PNDMScheduler")])
    return index


def to_diffusers(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a diffusers folder (safetensors + config.json per model, model_index.json, tokenizers, scheduler)
    from our format (or from another diffusers folder, which re-saves it)."""
    src, dst = Path(src), Path(dst)
    comps = load_components(src)
    _prepare(dst, overwrite)
    save_unet(comps.unet, dst / "unet")
    save_vae(comps.vae, dst / "vae")
    save_clip_text(comps.text_encoder, dst / "text_encoder")
    if comps.text_encoder_2 is not None:
        save_clip_text(comps.text_encoder_2, dst / "text_encoder_2")
    _copy_files(src, dst)
    (dst / DIFFUSERS_INDEX).write_text(json.dumps(_diffusers_index(comps), indent=2, sort_keys=True) + "\n")
    return dst


__all__ = ["from_diffusers", "to_diffusers"]
