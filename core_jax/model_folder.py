"""transformers-style model folders: ``config.json`` plus safetensors weights (one file, a variant, or shards).

A folder is a transformers model folder or a diffusers component folder (``text_encoder/``, ``image_encoder/``).
Weights are safetensors only; a folder with only ``.bin`` / ``.ckpt`` files is an error that says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from core_jax.state_dict import to_state_dict


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        pipeline = (Path(folder) / "text_encoder").is_dir()
        hint = " (for a diffusers pipeline pass its text_encoder/ folder)" if pipeline else ""
        raise FileNotFoundError(f"{path} not found: expected a model folder with config.json{hint}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def weight_files(folder: str | Path, variant: str | None = None) -> list[Path]:
    """The safetensors files of a folder's checkpoint (one file, or the shards its index lists)."""
    folder = Path(folder)
    stem = "model" if variant is None else f"model.{variant}"
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            return [folder / name for name in sorted(set(json.load(f)["weight_map"].values()))]
    found = sorted(p.name for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt"))
    raise FileNotFoundError(f"{folder}: no {single.name} or {index.name} (found: {found or 'nothing'}); "
                            "weights must be safetensors")


def read_weights(folder: str | Path, variant: str | None = None) -> dict[str, np.ndarray]:
    """All tensors of a folder's safetensors checkpoint (single file or shards) as numpy arrays."""
    out = {}
    for path in weight_files(folder, variant):
        with safe_open(str(path), framework="flax") as f:  # the flax backend reads bf16 too
            for key in f.keys():
                out[key] = np.asarray(f.get_tensor(key))
    return out


def save_safetensors(state_dict: dict[str, np.ndarray], path: str | Path) -> None:
    """Write a torch-layout state dict; arrays are made C-contiguous first (safetensors writes raw buffers,
    so a transposed view would be saved scrambled)."""
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(path), metadata={"format": "pt"})


def save_transformers_folder(model: nnx.Module, folder: str | Path, architecture: str) -> Path:
    """Write ``config.json`` (``model.config`` + ``architecture``) and ``model.safetensors`` for transformers."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**model.config.to_dict(), "architectures": [architecture], "dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_safetensors(to_state_dict(model), folder / "model.safetensors")
    return folder
