"""Load and save the UNet and the VAE in diffusers' folder format (``config.json`` plus
``diffusion_pytorch_model[.fp16].safetensors`` or a sharded ``.safetensors.index.json``).

``folder`` may be the model folder itself or a pipeline folder holding ``unet/`` / ``vae/``. Weights are read
with ``safetensors.numpy`` (no torch, no pickle) into a model whose parameters are allocated once, without
random initialisation.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from core_jax.state_dict import empty_module, load_state_dict, to_state_dict
from core_jax.nn import Dtype
from canvas_jax.models.unet import UNet2DConditionModel
from canvas_jax.models.vae import AutoencoderKL

CONFIG_NAME = "config.json"
WEIGHTS_STEM = "diffusion_pytorch_model"
_DEFAULT_DIFFUSERS_VERSION = "0.30.0"  # written when the config did not come from diffusers


def model_folder(folder: str | os.PathLike, subfolder: str) -> Path:
    """``folder`` if it holds a config.json, else ``folder/subfolder`` (a pipeline layout)."""
    folder = Path(folder)
    for candidate in (folder, folder / subfolder):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    raise FileNotFoundError(f"no {CONFIG_NAME} in {folder} or {folder / subfolder}")


def read_config(folder: Path, class_name: str) -> dict:
    config = json.loads((folder / CONFIG_NAME).read_text())
    found = config.get("_class_name", class_name)
    if found != class_name:
        raise ValueError(f"{folder / CONFIG_NAME} describes a {found!r}, expected {class_name!r}")
    return config


def read_weights(folder: Path, variant: str | None = None) -> dict[str, np.ndarray]:
    """The state dict in ``folder``: ``{stem}[.{variant}].safetensors`` or its sharded index. Without a
    ``variant`` the full-precision file is preferred, then ``fp16``."""
    variants = [variant] if variant else [None, "fp16"]
    for v in variants:
        name = f"{WEIGHTS_STEM}.{v}.safetensors" if v else f"{WEIGHTS_STEM}.safetensors"
        if (folder / name).is_file():
            return load_file(folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            out: dict[str, np.ndarray] = {}
            for shard in shards:
                out.update(load_file(folder / shard))
            return out
    present = sorted(p.name for p in folder.glob(f"{WEIGHTS_STEM}*"))
    hint = " (.bin checkpoints are pickles: convert them to safetensors first)" if any(
        p.endswith(".bin") for p in present) else ""
    raise FileNotFoundError(f"no {WEIGHTS_STEM}{'.' + variant if variant else ''}.safetensors (or sharded index) "
                            f"in {folder}; found {present or 'nothing'}{hint}")


_LEGACY_VAE_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_VAE_RE = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


def _modernise_vae_keys(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Old VAE checkpoints name the mid-block attention query/key/value/proj_attn (sometimes as 1x1 convs)."""
    out = {}
    for key, value in state_dict.items():
        m = _LEGACY_VAE_RE.match(key)
        if m:
            key = f"{m[1]}.{_LEGACY_VAE_ATTN[m[2]]}.{m[3]}"
            if value.ndim == 4:
                value = value[:, :, 0, 0]
        out[key] = value
    return out


def load_unet(folder: str | os.PathLike, *, variant: str | None = None, dtype: Dtype = jnp.float32,
              param_dtype: Dtype = jnp.float32) -> UNet2DConditionModel:
    """A :class:`UNet2DConditionModel` from a diffusers UNet folder (or a pipeline folder with ``unet/``)."""
    path = model_folder(folder, "unet")
    config = read_config(path, "UNet2DConditionModel")
    model = empty_module(lambda: UNet2DConditionModel(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
    return load_state_dict(model, read_weights(path, variant), what=f"UNet2DConditionModel from {path}")


def load_vae(folder: str | os.PathLike, *, variant: str | None = None, dtype: Dtype = jnp.float32,
             param_dtype: Dtype = jnp.float32) -> AutoencoderKL:
    """An :class:`AutoencoderKL` from a diffusers VAE folder (or a pipeline folder with ``vae/``)."""
    path = model_folder(folder, "vae")
    config = read_config(path, "AutoencoderKL")
    model = empty_module(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
    weights = _modernise_vae_keys(read_weights(path, variant))
    return load_state_dict(model, weights, what=f"AutoencoderKL from {path}")


def _save(model: nnx.Module, folder: str | os.PathLike, class_name: str, dtype) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": class_name,
              "_diffusers_version": model.config.get("_diffusers_version", _DEFAULT_DIFFUSERS_VERSION),
              **{k: v for k, v in model.config.items() if not k.startswith("_")}}
    if config.get("num_attention_heads"):  # diffusers reads the head counts from attention_head_dim
        config["attention_head_dim"], config["num_attention_heads"] = config["num_attention_heads"], None
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # an attached IP-Adapter is not part of the diffusers UNet: it is saved on its own (convert.ip_adapter)
    state = {k: np.ascontiguousarray(v.astype(dtype)) for k, v in to_state_dict(model).items()
             if "ip_adapter" not in k.split(".")}
    save_file(state, folder / f"{WEIGHTS_STEM}.safetensors", metadata={"format": "pt"})
    return folder


def save_unet(model: UNet2DConditionModel, folder: str | os.PathLike, *, dtype=np.float32) -> Path:
    """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` (``dtype``: np.float32 or np.float16)
    that ``diffusers.UNet2DConditionModel.from_pretrained(folder)`` loads."""
    return _save(model, folder, "UNet2DConditionModel", dtype)


def save_vae(model: AutoencoderKL, folder: str | os.PathLike, *, dtype=np.float32) -> Path:
    """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` for ``diffusers.AutoencoderKL``."""
    return _save(model, folder, "AutoencoderKL", dtype)
