"""Load and save the CLIP vision tower from / to transformers folders (``config.json`` + ``model.safetensors``).

``load_clip_vision(folder)`` reads a ``CLIPVisionModelWithProjection`` (the IP-Adapter ``image_encoder/``
folder), a ``CLIPVisionModel`` or a full ``CLIPModel`` (its text weights are ignored);
``save_clip_vision(model, folder)`` writes a folder that ``transformers.CLIPVisionModelWithProjection``
(or ``CLIPVisionModel``) ``.from_pretrained`` loads.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from core_jax.state_dict import empty_module, load_state_dict
from core_jax.model_folder import read_config, read_weights, save_transformers_folder
from canvas_jax.models.clip_vision import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection


def load_clip_vision(folder: str | Path, with_projection: bool = True, *, dtype=None, param_dtype=jnp.float32,
                     variant: str | None = None) -> CLIPVisionModel:
    """A CLIP vision tower from ``folder``: :class:`CLIPVisionModelWithProjection` (``with_projection=True``,
    needs ``visual_projection`` in the checkpoint) or :class:`CLIPVisionModel`."""
    config = CLIPVisionConfig.from_dict(read_config(folder))
    cls = CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
    model = empty_module(lambda: cls(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
    ignore = [r".*position_ids", r"text_model\..*", r"text_projection\..*", "logit_scale"]
    if not with_projection:
        ignore.append(r"visual_projection\..*")
    return load_state_dict(model, read_weights(folder, variant), what=f"CLIP vision tower from {folder}",
                           ignore=ignore)


def save_clip_vision(model: CLIPVisionModel, folder: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers' ``from_pretrained`` loads."""
    arch = "CLIPVisionModelWithProjection" if isinstance(model, CLIPVisionModelWithProjection) else "CLIPVisionModel"
    return save_transformers_folder(model, folder, arch)


__all__ = ["load_clip_vision", "save_clip_vision"]
