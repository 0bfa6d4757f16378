"""Contrastive image-text training (``task=clip``) on the shared loop.

The model (:class:`~canvas_jax.models.image_text.ImageTextModel`) embeds an image with its CNN tower and a
caption as the frozen ``text_encoder``'s token states, mean-pooled over the attention mask, through a
trainable projection; both L2-normalised. Loss: symmetric InfoNCE over the batch with CLIP's learned, clipped
temperature (:func:`~canvas_jax.models.image_text.contrastive_loss`).

With ``text_encoder.cache`` (the default) each distinct caption is encoded and pooled once, outside the step
(an :class:`~canvas_jax.train.encode_cache.EncodeCache`, as the text-to-image task caches its token states):
the batch carries ``text_pooled`` [B, hidden] and the encoder never runs in the step. Without it, the frozen
encoder is part of the model and runs in the step.

Eval: each eval batch is one retrieval gallery of ``clip.eval_examples`` test images and their captions;
the metrics are caption->image and image->caption recall@1/@5 within it
(:func:`canvas_jax.eval.retrieval.retrieval_metrics`; seen / held-out when the data flags held-out scenes),
averaged over the galleries, and the contrastive loss.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from canvas_jax import text_conditioning
from canvas_jax.eval.retrieval import retrieval_metrics
from canvas_jax.image_text import build_model, pooled_text
from canvas_jax.models.image_text import ImageTextModel, contrastive_loss, same_caption
from canvas_jax.train.data import DataFn, canvas_data
from canvas_jax.train.encode_cache import CachedIterator, EncodeCache
from core_jax.config import ConfigError
from core_jax.task import DataContext



def batch_pooled_text(model, batch) -> jax.Array:
    """The batch's pooled caption features: the cached ``text_pooled``, else ``model.text_encoder`` on its tokens."""
    if "text_pooled" in batch:
        return batch["text_pooled"]
    if model.text_encoder is not None:
        return pooled_text(model.text_encoder, batch["input_ids"], batch["attention_mask"])
    raise KeyError("batch has no 'text_pooled' and the model holds no text encoder (text_encoder.cache is "
                   "on: wrap the data with CachedIterator)")

class ContrastiveTask:
    """A :class:`core_jax.task.Task` training an image-text embedding model on captioned images."""

    def __init__(self, cfg, *, data_fn: DataFn | None = None):
        if cfg.data.caption_dropout:
            raise ConfigError(f"config key 'data.caption_dropout': {cfg.data.caption_dropout!r}; task=clip needs 0 "
                              "(an empty caption is no description of its image)")
        self.cfg = cfg
        self.data_fn = data_fn or canvas_data
        self.dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32
        self.text_source = cfg.text_encoder.source
        self.text_encoder = text_conditioning.load_text_encoder(self.text_source)
        self.tokenizer = text_conditioning.load_tokenizer(self.text_source, cfg.text_encoder.max_length)
        self.model_config = cfg.clip.model_config(cfg.data.image_size, text_conditioning.hidden_size(self.text_encoder))
        self.cache = EncodeCache(self.text_encoder, pooled_text, cfg.text_encoder.cache_size, what="pooled text",
                                 dtypes=(np.int32, np.int32)) if cfg.text_encoder.cache else None

    def create_model(self, rngs) -> ImageTextModel:
        return build_model(self.cfg, self.text_encoder, rngs, dtype=self.dtype,
                           with_encoder=not self.cfg.text_encoder.cache)

    def embed(self, model: ImageTextModel, batch) -> tuple[jax.Array, jax.Array]:
        """L2-normalised (image, caption) embeddings [B, D] of a batch."""
        missing = [k for k in ("image", "input_ids", "attention_mask") if k not in batch]
        if missing:
            raise KeyError(f"batch has no {missing} (keys: {sorted(batch)}); expected image float32 [B, H, W, 3] in "
                           "[-1, 1] and the tokenized captions")
        pooled = batch_pooled_text(model, batch)
        return model.embed_images(batch["image"]), model.embed_pooled(pooled)

    def loss(self, model: ImageTextModel, batch, rng):
        img, txt = self.embed(model, batch)
        scale = model.logit_scale()
        loss = contrastive_loss(img, txt, scale)
        return loss, {"logit_scale": scale}

    def eval_step(self, model: ImageTextModel, batch):
        img, txt = self.embed(model, batch)
        same = same_caption(batch["input_ids"])
        metrics = retrieval_metrics(img, txt, same, batch.get("heldout"))
        return {"loss": contrastive_loss(img, txt, model.logit_scale()), **metrics}

    # ------------------------------------------------------------------ data
    def _wrap(self, it):
        if it is not None and self.cache is not None:  # keeps the token ids: they tell identical captions apart
            it = CachedIterator(it, self.cache, ("input_ids", "attention_mask"), "text_pooled")
        return it

    def train_data(self, ctx: DataContext):
        return self._wrap(self.data_fn(self.cfg, self.tokenizer, ctx, "train", False))

    def eval_data(self, ctx: DataContext):
        n = self.cfg.clip.eval_examples
        if n % ctx.process_count:
            raise ConfigError(f"config key 'clip.eval_examples': {n} must divide by the {ctx.process_count} processes")
        gallery = dataclasses.replace(ctx, batch_size=n // ctx.process_count)
        return self._wrap(self.data_fn(self.cfg, self.tokenizer, gallery, "test", False))
