"""A trained ``task=reward_model`` run as a reward: ``LearnedReward(images uint8 NHWC, prompts) -> float32 [B]``.

    from canvas_jax.rl.reward_model import load_reward_model

    reward = load_reward_model("runs/reward_model_shapes")   # or "learned:RUN" in parse_rewards
    scores = reward(images_uint8, prompts)

A run folder holds everything: ``config.yaml`` (the ``clip`` section's architecture, text encoder source and
token length) and its checkpoints (the frozen text encoder too when the run did not cache pooled states, else it
is loaded from ``text_encoder.source``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from canvas_jax import text_conditioning
from canvas_jax.config import CanvasTrainConfig
from canvas_jax.errors import InputError
from canvas_jax.image_text import pooled_text
from canvas_jax.models.frozen import copy_module, freeze
from canvas_jax.models.reward_model import RewardModel
from core_jax import restore as core_restore


def build_reward_model(cfg: CanvasTrainConfig, text_encoder: nnx.Module, rngs: nnx.Rngs, *, dtype=jnp.float32,
                       with_encoder: bool = False) -> RewardModel:
    """The ``task=reward_model`` model of ``cfg`` (architecture from its ``clip`` section, image size
    ``data.image_size``); ``with_encoder``: holding a frozen copy of ``text_encoder``."""
    mcfg = cfg.clip.model_config(cfg.data.image_size, text_conditioning.hidden_size(text_encoder))
    encoder = freeze(copy_module(text_encoder)) if with_encoder else None
    return RewardModel(mcfg, rngs=rngs, dtype=dtype, text_encoder=encoder)


class LearnedReward:
    """A :class:`RewardModel` with its text encoder and tokenizer, as a reward (``name`` in the metrics)."""

    def __init__(self, model: RewardModel, text_encoder: nnx.Module, tokenizer, *, name: str = "learned",
                 batch_size: int = 256):
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size}: expected >= 1")
        self.name, self.tokenizer, self.batch_size = name, tokenizer, batch_size
        self.image_size = model.config.image_size
        m_def, self._m_state = nnx.split(model)
        e_def, self._e_state = nnx.split(text_encoder)

        def score(st, est, images, ids, mask):
            x = images.astype(jnp.float32) / 127.5 - 1.0
            if x.shape[1:3] != (self.image_size, self.image_size):
                x = jax.image.resize(x, (x.shape[0], self.image_size, self.image_size, 3), "linear", antialias=True)
            return nnx.merge(m_def, st)(x, pooled_text(nnx.merge(e_def, est), ids, mask))

        self._score = jax.jit(score)

    def __call__(self, images, prompts: Sequence[str]) -> np.ndarray:
        from canvas_jax.rl.rewards import _inputs

        images, prompts = _inputs(images, prompts)
        out = []
        for i in range(0, len(images), self.batch_size):
            tok = self.tokenizer(prompts[i:i + self.batch_size])
            out.append(np.asarray(self._score(self._m_state, self._e_state, jnp.asarray(images[i:i + self.batch_size]),
                                              jnp.asarray(tok["input_ids"]), jnp.asarray(tok["attention_mask"]))))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)


class _Structure:
    """The run's model structure, for :func:`core_jax.restore.restore_run` (reads no data)."""

    def __init__(self, cfg: CanvasTrainConfig, text_encoder: nnx.Module):
        self.cfg, self.text_encoder = cfg, text_encoder

    def create_model(self, rngs: nnx.Rngs) -> RewardModel:
        return build_reward_model(self.cfg, self.text_encoder, rngs, with_encoder=not self.cfg.text_encoder.cache)


def load_reward_model(run_dir: str | os.PathLike, *, which: str = "auto", ema: bool = True,
                      name: str = "learned") -> LearnedReward:
    """The reward of a ``task=reward_model`` run folder: its best checkpoint when it kept one (``which="auto"``),
    else the latest; the EMA weights when the run kept them."""
    cfg = core_restore.load_run_config(run_dir, CanvasTrainConfig)
    if cfg.task != "reward_model":
        raise InputError(f"{os.fspath(run_dir)} is a task={cfg.task!r} run; expected a task=reward_model run")
    encoder = text_conditioning.load_text_encoder(cfg.text_encoder.source)
    model = core_restore.restore_run(cfg, _Structure(cfg, encoder), which=which).model(ema=ema)
    if model.text_encoder is not None:
        encoder = model.text_encoder
    tokenizer = text_conditioning.load_tokenizer(cfg.text_encoder.source, cfg.text_encoder.max_length)
    return LearnedReward(model, encoder, tokenizer, name=name)
