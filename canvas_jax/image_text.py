"""The trained image-text embedding model of a ``task=clip`` run, ready to embed images and captions.

    from canvas_jax.image_text import load_image_text_model

    clip = load_image_text_model("runs/clip_shapes")
    img = clip.embed_images(images_uint8_nhwc)          # [B, D] float32, L2-normalised
    txt = clip.embed_texts(["a small red circle at the top left"])
    similarity = img @ txt.T

A run folder holds everything: ``config.yaml`` (architecture, text encoder source and token length) and the
checkpoints (the image tower, the text projection and temperature; the frozen text encoder too when the run
did not cache its states, else it is loaded from ``text_encoder.source``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from canvas_jax import text_conditioning
from canvas_jax.config import CanvasTrainConfig
from canvas_jax.errors import InputError
from canvas_jax.models.frozen import copy_module, freeze
from canvas_jax.models.image_text import ImageTextModel, masked_mean
from core_jax.text.tokenizer import Tokenizer
from core_jax import restore as core_restore
from core_jax.state_dict import load_state_dict

ENCODER_INFO = "image_encoder.json"  # an IP-Adapter folder's note of the image encoder it reads
TOWER_WEIGHTS = "image_encoder.safetensors"  # the fine-tuned image tower (ip_adapter.train_image_encoder)


def pooled_text(encoder: nnx.Module, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """The frozen encoder's token states mean-pooled over the attention mask: float32 [B, hidden]."""
    return masked_mean(text_conditioning.encode(encoder, input_ids, attention_mask), attention_mask)


def build_model(cfg: CanvasTrainConfig, text_encoder: nnx.Module, rngs: nnx.Rngs, *, dtype=jnp.float32,
                with_encoder: bool = False) -> ImageTextModel:
    """The ``task=clip`` model of ``cfg``; ``with_encoder``: holding a frozen copy of ``text_encoder`` (runs that
    do not cache the text states)."""
    mcfg = cfg.clip.model_config(cfg.data.image_size, text_conditioning.hidden_size(text_encoder))
    encoder = freeze(copy_module(text_encoder)) if with_encoder else None
    return ImageTextModel(mcfg, rngs=rngs, dtype=dtype, text_encoder=encoder)


class ImageTextEmbedder:
    """An :class:`ImageTextModel` with its text encoder and tokenizer: embeds uint8 images and caption strings."""

    run_config: CanvasTrainConfig | None = None  # set by load_image_text_model: the run's config and step
    step: int | None = None

    def __init__(self, model: ImageTextModel, text_encoder: nnx.Module, tokenizer: Tokenizer, *,
                 batch_size: int = 256):
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size}: expected >= 1")
        self.model, self.text_encoder, self.tokenizer, self.batch_size = model, text_encoder, tokenizer, batch_size
        self.image_size = model.config.image_size
        m_def, m_state = nnx.split(model)
        e_def, e_state = nnx.split(text_encoder)
        self._m_state, self._e_state = m_state, e_state

        def pixels(x):
            x = x.astype(jnp.float32) / 127.5 - 1.0
            if x.shape[1:3] != (self.image_size, self.image_size):
                x = jax.image.resize(x, (x.shape[0], self.image_size, self.image_size, 3), "linear", antialias=True)
            return x

        def images_fn(st, x):
            return nnx.merge(m_def, st).embed_images(pixels(x))

        def tokens_fn(st, x):
            return nnx.merge(m_def, st).image_tokens(pixels(x)).astype(jnp.float32)

        def texts_fn(st, est, ids, mask):
            return nnx.merge(m_def, st).embed_pooled(pooled_text(nnx.merge(e_def, est), ids, mask))

        self._images, self._tokens, self._texts = jax.jit(images_fn), jax.jit(tokens_fn), jax.jit(texts_fn)
        self._negative_tokens = None

    @property
    def embed_dim(self) -> int:
        return self.model.config.embed_dim

    def _run_images(self, fn, images, what: str) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
            raise InputError(f"{what}: expected uint8 images [B, H, W, 3], got {x.dtype} {list(x.shape)}")
        return np.concatenate([np.asarray(fn(self._m_state, jnp.asarray(x[i:i + self.batch_size])))
                               for i in range(0, max(len(x), 1), self.batch_size)])  # an empty batch: [0, ...]

    def embed_images(self, images) -> np.ndarray:
        """uint8 images [B, H, W, 3] (or one [H, W, 3]; any size, resized to the model's) -> float32 [B, D]."""
        return self._run_images(self._images, images, "embed_images")

    def image_tokens(self, images) -> np.ndarray:
        """uint8 images [B, H, W, 3] (or one) -> the image tower's feature map tokens float32 [B, T, C]: the
        ``ip_adapter_image_embeds`` of an IP-Adapter Plus trained with ``ip_adapter.image_tokens=feature_map``."""
        return self._run_images(self._tokens, images, "image_tokens")

    def negative_image_tokens(self) -> np.ndarray:
        """The tokens [1, T, C] of an all-zero input (mid-grey): the unconditional image branch of an IP-Adapter
        Plus on this tower (``negative_ip_adapter_image_embeds``), as diffusers encodes a zero image."""
        if self._negative_tokens is None:  # a constant of the model: computed once
            zero = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
            self._negative_tokens = np.asarray(self.model.image_tokens(zero), np.float32)
        return self._negative_tokens.copy()

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Caption strings -> float32 [B, D]."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError("embed_texts: expected a list of caption strings")
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(list(texts[i:i + self.batch_size]))
            out.append(np.asarray(self._texts(self._m_state, self._e_state, jnp.asarray(tok["input_ids"]),
                                              jnp.asarray(tok["attention_mask"]))))
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def similarity(self, images, texts: Sequence[str]) -> np.ndarray:
        """Cosine similarities [n_images, n_texts]."""
        return self.embed_images(images) @ self.embed_texts(texts).T


class _Structure:
    """The run's model structure, for :func:`core_jax.restore.restore_run` (reads no data)."""

    def __init__(self, cfg: CanvasTrainConfig, text_encoder: nnx.Module):
        self.cfg, self.text_encoder = cfg, text_encoder

    def create_model(self, rngs: nnx.Rngs) -> ImageTextModel:
        return build_model(self.cfg, self.text_encoder, rngs, with_encoder=not self.cfg.text_encoder.cache)


def load_image_text_model(run_dir: str | os.PathLike, *, which: str = "auto", ema: bool = True,
                          batch_size: int = 256, tower_weights: str | os.PathLike | None = None) -> ImageTextEmbedder:
    """The embedder of a ``task=clip`` run folder: its best checkpoint when it kept one (``which="auto"``), else
    the latest (``"best"`` / ``"latest"`` to choose); the EMA weights when the run kept them. ``tower_weights``:
    a safetensors file of image tower weights (torch layout) that replace the run's (an IP-Adapter run's
    fine-tuned tower, :func:`load_adapter_image_encoder`)."""
    cfg = core_restore.load_run_config(run_dir, CanvasTrainConfig)
    if cfg.task != "clip":
        raise InputError(f"{os.fspath(run_dir)} is a task={cfg.task!r} run; expected a task=clip run")
    encoder = text_conditioning.load_text_encoder(cfg.text_encoder.source)
    restored = core_restore.restore_run(cfg, _Structure(cfg, encoder), which=which)
    model = restored.model(ema=ema)
    if model.text_encoder is not None:
        encoder = model.text_encoder
    if tower_weights is not None:
        load_state_dict(model.image_tower, load_file(os.fspath(tower_weights)), what=f"image tower {tower_weights}")
    tokenizer = text_conditioning.load_tokenizer(cfg.text_encoder.source, cfg.text_encoder.max_length)
    embedder = ImageTextEmbedder(model, encoder, tokenizer, batch_size=batch_size)
    embedder.run_config, embedder.step = cfg, restored.step
    return embedder


def load_adapter_image_encoder(adapter_dir: str | os.PathLike, **kwargs) -> ImageTextEmbedder:
    """The image encoder an IP-Adapter folder (``RUN_DIR/ip_adapter`` of a ``task=ip_adapter`` run) was trained
    with, from its ``image_encoder.json``: the clip run, with the fine-tuned tower when the adapter trained one."""
    info_file = Path(adapter_dir) / ENCODER_INFO
    if not info_file.is_file():
        raise FileNotFoundError(f"{info_file}: missing; expected an IP-Adapter folder written by task=ip_adapter")
    info = json.loads(info_file.read_text())
    tower = info.get("tower_weights")
    return load_image_text_model(info["image_encoder"], tower_weights=Path(adapter_dir) / tower if tower else None,
                                 **kwargs)
