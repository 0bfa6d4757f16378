"""A Bradley-Terry reward model (``task=reward_model``) on preference pairs, on the shared loop.

The model (:class:`~canvas_jax.models.reward_model.RewardModel`, its towers shaped by the ``clip`` section) scores
the ``chosen`` and ``rejected`` image of each pair for the pair's caption; the loss is
:func:`~canvas_jax.models.reward_model.bradley_terry_loss`. Data: a preference dataset in ``data.dataset``
(``canvas-jax rl collect`` or ``canvas-jax data build --kind preferences``), read by
:func:`canvas_jax.train.dpo_task.preference_data`; its ``test`` split (pairs labelled ``"split": "test"``) gives
the held-out pair accuracy (``eval_pair_acc``). With ``text_encoder.cache`` each distinct caption is encoded and
pooled once, outside the step. The trained run is a reward: ``learned:RUN`` in
:func:`canvas_jax.rl.rewards.parse_rewards` (:func:`canvas_jax.rl.reward_model.load_reward_model`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from canvas_jax import text_conditioning
from canvas_jax.image_text import pooled_text
from canvas_jax.models.reward_model import RewardModel, bradley_terry_loss
from canvas_jax.rl.reward_model import build_reward_model
from canvas_jax.train.data import DataFn
from canvas_jax.train.contrastive_task import batch_pooled_text
from canvas_jax.train.dpo_task import preference_data
from canvas_jax.train.encode_cache import CachedIterator, EncodeCache
from core_jax.task import DataContext


class RewardModelTask:
    """A :class:`core_jax.task.Task` training a :class:`RewardModel` on preference pairs."""

    def __init__(self, cfg, *, data_fn: DataFn | None = None):
        self.cfg = cfg
        self.data_fn = data_fn or preference_data
        self.dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32
        self.text_encoder = text_conditioning.load_text_encoder(cfg.text_encoder.source)
        self.tokenizer = text_conditioning.load_tokenizer(cfg.text_encoder.source, cfg.text_encoder.max_length)
        self.cache = EncodeCache(self.text_encoder, pooled_text, cfg.text_encoder.cache_size, what="pooled text",
                                 dtypes=(np.int32, np.int32)) if cfg.text_encoder.cache else None

    def create_model(self, rngs) -> RewardModel:
        return build_reward_model(self.cfg, self.text_encoder, rngs, dtype=self.dtype,
                                  with_encoder=not self.cfg.text_encoder.cache)

    def scores(self, model: RewardModel, batch) -> tuple[jax.Array, jax.Array]:
        """Rewards ``[B]`` of the chosen and the rejected images."""
        missing = [k for k in ("chosen", "rejected") if k not in batch]
        if missing:
            raise KeyError(f"batch has no {missing} (keys: {sorted(batch)}); task=reward_model reads a preference "
                           "dataset (canvas-jax rl collect, or canvas-jax data build --kind preferences)")
        pooled = batch_pooled_text(model, batch)
        b = batch["chosen"].shape[0]
        r = model(jnp.concatenate([batch["chosen"], batch["rejected"]]), jnp.concatenate([pooled, pooled]))
        return r[:b], r[b:]

    def loss(self, model: RewardModel, batch, rng):
        return bradley_terry_loss(*self.scores(model, batch))

    def eval_step(self, model: RewardModel, batch):
        r_w, r_l = self.scores(model, batch)
        margin = r_w - r_l
        return {"loss": -jnp.sum(jax.nn.log_sigmoid(margin)), "pair_acc": jnp.sum((margin > 0).astype(jnp.float32)),
                "count": jnp.float32(margin.shape[0])}

    # ------------------------------------------------------------------ data
    def _wrap(self, it):
        if it is not None and self.cache is not None:
            it = CachedIterator(it, self.cache, ("input_ids", "attention_mask"), "text_pooled",
                                drops=("input_ids", "attention_mask"))
        return it

    def train_data(self, ctx: DataContext):
        return self._wrap(self.data_fn(self.cfg, self.tokenizer, ctx, "train", False))

    def eval_data(self, ctx: DataContext):
        return self._wrap(self.data_fn(self.cfg, self.tokenizer, ctx, "test", False))
