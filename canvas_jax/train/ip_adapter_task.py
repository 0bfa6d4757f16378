"""IP-Adapter training (``task=ip_adapter``): image prompts on the frozen model of ``init_from``.

The UNet of ``init_from`` gets a plain :class:`~canvas_jax.models.ip_adapter.ImageProjection`
(``ip_adapter.num_tokens`` tokens) and ``to_k_ip`` / ``to_v_ip`` on every cross-attention layer; only those
(every parameter under a path element ``ip_adapter``) are trained (the task's ``trainable``): the base UNet,
VAE and text encoder stay bit-identical. (LoRA alongside is not supported.)

The condition is each example's ``cond_image`` (float32 [B, H, W, 3] in [-1, 1]; on Shapes a jittered rendering
of the same scene, see :func:`canvas_jax.data.shapes.render`), embedded by the image tower of the ``task=clip``
run ``ip_adapter.image_encoder``; the embeddings are cached like the text states (``image_emb`` [B, D]).
Condition dropout, independent: the caption is replaced by "" with probability ``data.caption_dropout`` (in the
data) and the image embedding by zeros (diffusers' unconditional image branch) with probability
``ip_adapter.image_dropout`` (in the step), so guidance works on either.

At every checkpoint and at the end the adapter (EMA when kept) is written in diffusers' format to
``RUN_DIR/ip_adapter/ip-adapter.safetensors`` beside ``image_encoder.json`` (the clip run it expects)::

    pipe = Pipeline.from_pretrained(cfg.init_from)
    pipe.load_ip_adapter("RUN_DIR/ip_adapter", image_encoder_folder=None)
    emb = load_image_text_model(clip_run).embed_images(reference_uint8)     # [n, D]
    pipe(prompt, ip_adapter_image_embeds=emb, ...)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from canvas_jax.convert.ip_adapter import WEIGHT_NAME, save_ip_adapter
from canvas_jax.image_text import load_image_text_model
from canvas_jax.models.ip_adapter import ImageProjection, attach_ip_adapter
from canvas_jax.models.unet import UNet2DConditionModel
from canvas_jax.train.encode_cache import CachedIterator, EncodeCache
from canvas_jax.train.finetune_task import unet_with_dtype
from canvas_jax.train.init_from import InitFromTask
from core_jax.config import ConfigError
from core_jax.task import DataContext

ADAPTER_TRAINABLE = nnx.All(nnx.Param, nnx.PathContains("ip_adapter"))
ENCODER_INFO = "image_encoder.json"


def adapter_dir(run_dir: str | os.PathLike) -> Path:
    """Where an ``ip_adapter`` run's adapter lands: ``RUN_DIR/ip_adapter`` (``ip-adapter.safetensors``)."""
    return Path(run_dir) / "ip_adapter"


def _embed(model, image):
    return model.embed_images(image.astype(jnp.float32)).astype(jnp.float32)


def shapes_condition_data(cfg, tokenizer, ctx: DataContext, split: str, with_masks: bool):
    """In-memory Shapes batches with a condition: ``image``, ``input_ids`` / ``attention_mask`` (caption dropout
    applied) and ``cond_image`` (another, jittered rendering of the same scene)."""
    from canvas_jax.data.shapes import ShapesConfig, ShapesSource
    from core_jax import data as data_lib

    d = cfg.data
    if d.dataset != "shapes":
        raise ConfigError(f"config key 'data.dataset': {d.dataset!r}; task=ip_adapter reads condition images from "
                          "'shapes' (or pass a data_fn whose batches carry 'cond_image')")
    train = split == "train"
    n = d.num_examples if train else max(d.num_examples // 20, 64)
    source = ShapesSource(ShapesConfig(resolution=d.image_size, **d.options), num_examples=n, split=split,
                          with_condition=True)
    dropout = d.caption_dropout if train else 0.0

    def convert(ex, rng):
        caption = "" if dropout and rng.random() < dropout else ex["caption"]
        tok = tokenizer([caption])  # init_from's tokenizer, at its token length
        return {"image": ex["image"].astype(np.float32) / 127.5 - 1.0,
                "cond_image": ex["condition"].astype(np.float32) / 127.5 - 1.0,
                "input_ids": tok["input_ids"][0], "attention_mask": tok["attention_mask"][0]}

    return data_lib.make_iterator(source, batch_size=ctx.batch_size, seed=ctx.seed, shuffle=train,
                                  num_epochs=None if train else 1, random_transforms=[convert],
                                  shard_index=ctx.process_index, shard_count=ctx.process_count,
                                  worker_count=d.worker_count)


class IPAdapterTask(InitFromTask):
    """Trains an IP-Adapter (projection + ``to_k_ip`` / ``to_v_ip``) on the frozen text-to-image model."""

    trainable = ADAPTER_TRAINABLE

    def __init__(self, cfg, *, data_fn=None):
        enc = cfg.ip_adapter.image_encoder
        if not enc:
            raise ConfigError("config key 'ip_adapter.image_encoder': empty; expected a task=clip run folder")
        if not Path(enc).is_dir():
            raise FileNotFoundError(f"ip_adapter.image_encoder={enc!r} does not exist; expected a task=clip run "
                                    "folder (canvas-jax train --config configs/canvas/clip_shapes.yaml)")
        self.embedder = load_image_text_model(enc)
        super().__init__(cfg, data_fn=data_fn or shapes_condition_data)
        self._image_dropout = cfg.ip_adapter.image_dropout
        self.image_cache = EncodeCache(self.embedder.model, _embed, cfg.ip_adapter.cache_size,
                                       what="image encoder", dtypes=(np.float32,))

    @property
    def image_embed_dim(self) -> int:
        return self.embedder.embed_dim

    def unet_config(self) -> dict:
        return self.base_unet_config()

    def build_unet(self, rngs: nnx.Rngs) -> UNet2DConditionModel:
        unet = unet_with_dtype(self.base_unet, self.dtype)
        cross = unet.config["cross_attention_dim"]
        cross = cross if isinstance(cross, int) else cross[0]
        proj = ImageProjection(self.image_embed_dim, cross, self.cfg.ip_adapter.num_tokens, rngs=rngs,
                               dtype=self.dtype)
        attach_ip_adapter(unet, proj, rngs=rngs)
        return unet

    def unet_kwargs(self, model, batch, rng: jax.Array) -> dict:
        if "image_emb" not in batch:
            raise KeyError(f"batch has no 'image_emb' (keys: {sorted(batch)}); task=ip_adapter needs batches with "
                           "'cond_image' float32 [B, H, W, 3] in [-1, 1]")
        emb = jnp.asarray(batch["image_emb"], jnp.float32)
        p = self._image_dropout
        if p > 0:
            keep = jax.random.bernoulli(rng, 1.0 - p, (emb.shape[0], 1))
            emb = jnp.where(keep, emb, 0.0)
        return {"ip_tokens": model.unet.ip_adapter(emb[:, None])}

    def eval_step(self, model, batch):
        self._image_dropout = 0.0  # eval: every example keeps its image condition (read while tracing)
        try:
            return super().eval_step(model, batch)
        finally:
            self._image_dropout = self.cfg.ip_adapter.image_dropout

    def _wrap(self, it):
        it = super()._wrap(it)
        if it is not None:
            it = CachedIterator(it, self.image_cache, ("cond_image",), "image_emb", drops=("cond_image",))
        return it


def save_adapter(unet, run_dir: str | os.PathLike, image_encoder: str) -> Path:
    """Write ``unet``'s adapter (diffusers format) and ``image_encoder.json`` to ``RUN_DIR/ip_adapter``."""
    out = adapter_dir(run_dir)
    path = save_ip_adapter(unet, out, weight_name=WEIGHT_NAME)
    info = {"image_encoder": os.path.abspath(image_encoder), "kind": "canvas_jax.image_text",
            "usage": "load_image_text_model(image_encoder).embed_images(uint8) -> ip_adapter_image_embeds"}
    (out / ENCODER_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return path
