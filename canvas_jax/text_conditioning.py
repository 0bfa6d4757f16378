"""Text conditioning (training and run folders): which encoder, its tokenizer, and the token states it gives.

``source`` is ``"minilm"`` (the packaged all-MiniLM-L6-v2: BERT token states, 384-d) or a transformers
folder holding a ``BertModel`` or a ``CLIPTextModel`` (with its tokenizer files in the folder, or in a
sibling ``tokenizer/`` folder for a diffusers pipeline's ``text_encoder/``). Conditioning is the last
hidden state ``[B, T, D]``: BERT reads the attention mask, CLIP (as Stable Diffusion) does not.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from canvas_jax.convert.text_encoders import load_clip_text
from core_jax.model_folder import read_config
from core_jax.text.minilm import load_bert, minilm_folder
from core_jax.text.bert import BertModel
from canvas_jax.models.clip import CLIPTextModel
from core_jax.text.tokenizer import Tokenizer


def tokenizer_folder(source: str) -> Path:
    """The folder whose files build the tokenizer of ``source``."""
    if source == "minilm":
        return minilm_folder()
    folder = Path(source)
    for candidate in (folder, folder.parent / "tokenizer"):
        if (candidate / "tokenizer.json").is_file() or (candidate / "vocab.json").is_file():
            return candidate
    raise FileNotFoundError(f"text_encoder.source={source!r}: no tokenizer files (tokenizer.json or vocab.json + "
                            f"merges.txt) in {folder} or {folder.parent / 'tokenizer'}")


def load_tokenizer(source: str, max_length: int) -> Tokenizer:
    return Tokenizer.from_folder(tokenizer_folder(source), model_max_length=max_length)


def load_text_encoder(source: str, *, dtype=None, param_dtype=jnp.float32) -> nnx.Module:
    """The pretrained encoder named by ``source`` (see the module docstring), parameters in ``param_dtype``."""
    kw = {"dtype": dtype, "param_dtype": param_dtype}
    if source == "minilm":
        return load_bert(minilm_folder(), **kw)
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"text_encoder.source={source!r}: expected 'minilm' or a folder with a BertModel or "
                                "CLIPTextModel (config.json + model.safetensors)")
    model_type = read_config(folder).get("model_type", "")
    if model_type in ("bert",):
        return load_bert(folder, **kw)
    if model_type in ("clip_text_model", "clip"):
        return load_clip_text(folder, **kw)
    raise ValueError(f"text_encoder.source={source!r}: config.json has model_type={model_type!r}; expected 'bert' or "
                     "'clip_text_model'")


def hidden_size(encoder: nnx.Module) -> int:
    return int(encoder.config.hidden_size)


def encode(encoder: nnx.Module, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Token states ``[B, T, D]`` (float32) that condition the UNet's cross-attention."""
    if isinstance(encoder, BertModel):
        return encoder(input_ids, attention_mask).last_hidden_state.astype("float32")
    if isinstance(encoder, CLIPTextModel):
        return encoder(input_ids).last_hidden_state.astype("float32")
    raise TypeError(f"unsupported text encoder {type(encoder).__name__}; expected BertModel or CLIPTextModel")
