"""Load and save CLIP text encoders (SD's, SDXL's two) from / to transformers-style folders (safetensors only).

The folder plumbing is :mod:`core_jax.model_folder`; BERT / MiniLM loading is :mod:`core_jax.text.minilm`.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from canvas_jax.models.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from core_jax.model_folder import read_config, read_weights, save_transformers_folder
from core_jax.state_dict import empty_module, load_state_dict


def _clip_text_weights(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Key layout of ``CLIPTextModel[WithProjection]``: add the ``text_model.`` prefix that recent
    transformers leaves out when it saves a plain ``CLIPTextModel``."""
    if any(k.startswith("text_model.") for k in weights):
        return weights
    return {k if k.startswith("text_projection.") else f"text_model.{k}": v for k, v in weights.items()}


def load_clip_text(folder: str | Path, with_projection: bool = False, *, dtype=None, param_dtype=jnp.float32,
                   variant: str | None = None) -> CLIPTextModel:
    """A CLIP text encoder from ``folder`` (``CLIPTextModel``, ``...WithProjection`` or a full ``CLIPModel``).

    ``with_projection=True`` builds :class:`CLIPTextModelWithProjection` (SDXL's ``text_encoder_2``);
    with False a checkpoint's ``text_projection`` is ignored. Vision weights of a full CLIP are ignored.
    """
    config = CLIPTextConfig.from_dict(read_config(folder))
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = empty_module(lambda: cls(config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
    ignore = [r".*position_ids", r"vision_model\..*", r"visual_projection\..*", "logit_scale"]
    if not with_projection:
        ignore.append(r"text_projection\..*")
    weights = _clip_text_weights(read_weights(folder, variant))
    return load_state_dict(model, weights, what=f"CLIP text encoder from {folder}", ignore=ignore)


def save_clip_text(model: CLIPTextModel, folder: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers' ``from_pretrained`` loads."""
    arch = "CLIPTextModelWithProjection" if isinstance(model, CLIPTextModelWithProjection) else "CLIPTextModel"
    return save_transformers_folder(model, folder, arch)


__all__ = ["load_clip_text", "save_clip_text"]
