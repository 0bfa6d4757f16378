"""IP-Adapter training (``task=ip_adapter``): image prompts on the frozen model of ``init_from``.

The UNet of ``init_from`` gets an image projection and ``to_k_ip`` / ``to_v_ip`` on every cross-attention layer;
only those (every parameter under a path element ``ip_adapter``) are trained (the task's ``trainable``): the base
UNet, VAE and text encoder stay bit-identical. (LoRA alongside is not supported.) The projection reads, from the
image tower of the ``task=clip`` run ``ip_adapter.image_encoder``, per ``ip_adapter.image_tokens``:

- ``embeds``: its pooled embedding [D] through a plain :class:`~canvas_jax.models.ip_adapter.ImageProjection`
  (``ip_adapter.num_tokens`` tokens);
- ``feature_map``: its last feature map as tokens [T, C] (the analogue of a ViT's penultimate hidden states)
  through the IP-Adapter Plus resampler (``num_tokens`` queries, ``resampler_depth`` layers, width the UNet's
  cross_attention_dim, 64-wide heads): an IP-Adapter Plus in diffusers' format.

The condition is each example's ``cond_image`` (float32 [B, H, W, 3] in [-1, 1]; on Shapes a jittered rendering
of the same scene, see :func:`canvas_jax.data.shapes.render`); its embedding / tokens are cached like the text
states (``image_emb``), unless ``ip_adapter.train_image_encoder``: then a copy of the tower trains with the
adapter (``unet.ip_adapter.image_encoder``, run on ``cond_image`` in the step) and is written beside it.
Condition dropout, independent: the caption is replaced by "" with probability ``data.caption_dropout`` (in the
data) and the image condition by the unconditional image branch with probability ``ip_adapter.image_dropout``
(in the step): a zero embedding (plain), or the tokens of an all-zero input (Plus; as diffusers encodes its
negative image), so guidance works on either. With
``ip_adapter.composition_prob`` (Shapes), some examples teach composition: the target is one shape of the scene,
the caption only its cell ("at the top left") and the condition that shape drawn in another cell, so the
position comes from the text and what is drawn from the image. With ``ip_adapter.distill`` the target mixes in
the frozen base UNet's prediction at the same noisy latents given the target's full caption (``teacher_emb``,
cached like the text states): the adapter learns to say with the image what the caption would have said, against
a target far less noisy than the noise itself. ``ip_adapter.kv_from_text`` starts every ``to_k_ip`` / ``to_v_ip``
as a copy of its layer's ``to_k`` / ``to_v``.

At every checkpoint and at the end the adapter (EMA when kept) is written in diffusers' format to
``RUN_DIR/ip_adapter/ip-adapter.safetensors`` beside ``image_encoder.json`` (the clip run it expects) and, with
``train_image_encoder``, ``image_encoder.safetensors`` (the tuned tower)::

    pipe = Pipeline.from_pretrained(cfg.init_from)
    pipe.load_ip_adapter("RUN_DIR/ip_adapter", image_encoder_folder=None)
    clip = load_adapter_image_encoder("RUN_DIR/ip_adapter")   # the clip run (+ the tuned tower when trained)
    emb = clip.embed_images(reference_uint8)     # [n, D]
    pipe(prompt, ip_adapter_image_embeds=emb, ...)
    # feature_map (Plus): ip_adapter_image_embeds=clip.image_tokens(reference_uint8)  [n, T, C] and
    # negative_ip_adapter_image_embeds=clip.negative_image_tokens() repeated to [n, T, C]
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from canvas_jax.convert.ip_adapter import WEIGHT_NAME, save_ip_adapter
from canvas_jax.image_text import ENCODER_INFO, TOWER_WEIGHTS, load_image_text_model
from canvas_jax.models.frozen import copy_module
from canvas_jax.models.image_text import l2_normalize
from canvas_jax.models.ip_adapter import PLUS_HEAD_DIM, ImageProjection, IPAdapterPlusImageProjection, attach_ip_adapter
from canvas_jax.models.unet import UNet2DConditionModel
from canvas_jax.train.encode_cache import CachedIterator, EncodeCache
from canvas_jax.train.finetune_task import unet_with_dtype
from canvas_jax.train.init_from import InitFromTask
from core_jax.config import ConfigError
from core_jax.model_folder import save_safetensors
from core_jax.state_dict import to_state_dict
from core_jax.task import DataContext

ADAPTER_TRAINABLE = nnx.All(nnx.Param, nnx.PathContains("ip_adapter"))


def adapter_dir(run_dir: str | os.PathLike) -> Path:
    """Where an ``ip_adapter`` run's adapter lands: ``RUN_DIR/ip_adapter`` (``ip-adapter.safetensors``)."""
    return Path(run_dir) / "ip_adapter"


def _embed(model, image):
    return model.embed_images(image.astype(jnp.float32)).astype(jnp.float32)


def _tokens(model, image):
    return model.image_tokens(image.astype(jnp.float32)).astype(jnp.float32)


def composition_example(scene, rng: np.random.Generator, resolution: int
                        ) -> tuple[np.ndarray, str, np.ndarray, str]:
    """(target image, caption, condition image, the target's full caption) teaching composition: one shape of
    ``scene`` at its cell, the caption only "at the <cell>", the condition the same shape (jittered) in another
    cell."""
    from canvas_jax.data import shapes

    spec = scene.shapes[int(rng.integers(len(scene.shapes)))]
    others = [p for p in shapes.POSITIONS if p != spec.position]
    moved = dataclasses.replace(spec, position=others[int(rng.integers(len(others)))])
    target_scene = shapes.Scene((spec,), scene.background)
    cond = shapes.render(shapes.Scene((moved,), scene.background), resolution,
                         jitter_seed=int(rng.integers(2 ** 31)))
    return shapes.render(target_scene, resolution), f"at the {spec.position}", cond, target_scene.caption


def shapes_condition_data(cfg, tokenizer, ctx: DataContext, split: str, with_masks: bool):
    """In-memory Shapes batches with a condition: ``image``, ``input_ids`` / ``attention_mask`` (caption dropout
    applied) and ``cond_image`` (another, jittered rendering of the same scene)."""
    from canvas_jax.data import shapes
    from core_jax import data as data_lib

    d = cfg.data
    if d.dataset != "shapes":
        raise ConfigError(f"config key 'data.dataset': {d.dataset!r}; task=ip_adapter reads condition images from "
                          "'shapes' (or pass a data_fn whose batches carry 'cond_image')")
    train = split == "train"
    n = d.num_examples if train else max(d.num_examples // 20, 64)
    source = shapes.ShapesSource(shapes.ShapesConfig(resolution=d.image_size, **d.options), num_examples=n,
                                 split=split, with_condition=True)
    dropout = d.caption_dropout if train else 0.0
    compose = cfg.ip_adapter.composition_prob if train else 0.0
    teacher = cfg.ip_adapter.distill > 0

    def convert(ex, rng):
        image, caption, cond = ex["image"], ex["caption"], ex["condition"]
        full = caption
        if compose and rng.random() < compose:
            image, caption, cond, full = composition_example(shapes.Scene.from_json(ex["scene"]), rng, d.image_size)
        elif dropout and rng.random() < dropout:
            caption = ""
        tok = tokenizer([caption])  # init_from's tokenizer, at its token length
        out = {"image": image.astype(np.float32) / 127.5 - 1.0, "cond_image": cond.astype(np.float32) / 127.5 - 1.0,
               "input_ids": tok["input_ids"][0], "attention_mask": tok["attention_mask"][0]}
        if teacher:  # distillation: the teacher reads the target image's full caption
            tok = tokenizer([full])
            out.update(teacher_input_ids=tok["input_ids"][0], teacher_attention_mask=tok["attention_mask"][0])
        return out

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
        if self.embedder.image_size != cfg.data.image_size:
            raise ConfigError(f"config key 'data.image_size': {cfg.data.image_size}; the image encoder {enc!r} reads "
                              f"{self.embedder.image_size}x{self.embedder.image_size} images: expected the same")
        super().__init__(cfg, data_fn=data_fn or shapes_condition_data)
        self._image_dropout, self._distill = cfg.ip_adapter.image_dropout, cfg.ip_adapter.distill
        self.plus = cfg.ip_adapter.image_tokens == "feature_map"
        # the unconditional image branch: zeros (plain) or the tokens of an all-zero input (Plus)
        self._negative = self.embedder.negative_image_tokens()[0] if self.plus else 0.0
        self.tune_encoder = cfg.ip_adapter.train_image_encoder
        # a frozen tower's embeddings / tokens are cached; a tower in training is run in the step
        self.image_cache = None if self.tune_encoder else EncodeCache(
            self.embedder.model, _tokens if self.plus else _embed, cfg.ip_adapter.cache_size, what="image encoder",
            dtypes=(np.float32,))

    @property
    def image_embed_dim(self) -> int:
        """Features per condition vector: the embedding size, or the feature map's channels (Plus)."""
        return self.embedder.model.config.channels[-1] if self.plus else self.embedder.embed_dim

    def unet_config(self) -> dict:
        return self.base_unet_config()

    def build_unet(self, rngs: nnx.Rngs) -> UNet2DConditionModel:
        unet = unet_with_dtype(self.base_unet, self.dtype)
        cross = unet.config["cross_attention_dim"]
        cross = cross if isinstance(cross, int) else cross[0]
        ic = self.cfg.ip_adapter
        if not self.plus:
            proj = ImageProjection(self.image_embed_dim, cross, ic.num_tokens, rngs=rngs, dtype=self.dtype)
        elif cross % PLUS_HEAD_DIM:
            raise ConfigError(f"config key 'ip_adapter.image_tokens': feature_map needs the UNet's "
                              f"cross_attention_dim ({cross}) to be a multiple of {PLUS_HEAD_DIM} (Plus heads)")
        else:
            proj = IPAdapterPlusImageProjection(self.image_embed_dim, cross, cross, depth=ic.resampler_depth,
                                                dim_head=PLUS_HEAD_DIM, heads=cross // PLUS_HEAD_DIM,
                                                num_queries=ic.num_tokens, rngs=rngs, dtype=self.dtype)
        attach_ip_adapter(unet, proj, rngs=rngs, kv_from_text=ic.kv_from_text)
        if self.tune_encoder:  # a copy of the tower under ip_adapter: trained, EMA'd and checkpointed with it
            unet.ip_adapter.image_encoder = copy_module(self.embedder.model.image_tower)
        return unet

    def _condition(self, model, batch) -> tuple[jax.Array, jax.Array | float]:
        """(the batch's image embeddings [B, D] / tokens [B, T, C], the unconditional branch's)."""
        if not self.tune_encoder:
            return jnp.asarray(batch["image_emb"], jnp.float32), self._negative
        tower = model.unet.ip_adapter.image_encoder
        cond = jnp.asarray(batch["cond_image"], jnp.float32)
        if not self.plus:  # embed_images: the projected, L2-normalised embedding; zeros when dropped
            return l2_normalize(tower(cond)), 0.0
        return tower.feature_tokens(cond), tower.feature_tokens(jnp.zeros_like(cond[:1]))[0]

    def unet_kwargs(self, model, batch, rng: jax.Array) -> dict:
        key = "cond_image" if self.tune_encoder else "image_emb"
        if key not in batch:
            raise KeyError(f"batch has no {key!r} (keys: {sorted(batch)}); task=ip_adapter needs batches with "
                           "'cond_image' float32 [B, H, W, 3] in [-1, 1]")
        emb, negative = self._condition(model, batch)  # [B, D] or [B, T, C] (Plus)
        if self._image_dropout > 0:
            keep = self._keep_image(rng, emb.shape[0]).reshape((-1,) + (1,) * (emb.ndim - 1))
            emb = jnp.where(keep, emb, negative)
        return {"ip_tokens": model.unet.ip_adapter(emb[:, None])}

    def _keep_image(self, rng: jax.Array, batch_size: int) -> jax.Array:
        """[B] bool: the examples that keep their image condition (the rest get the unconditional branch)."""
        return jax.random.bernoulli(rng, 1.0 - self._image_dropout, (batch_size,))

    def teacher_target(self, model, batch, x_in, t, context, target, rng):
        """With ``ip_adapter.distill``: mix in the frozen base UNet's prediction (no image tokens) given the full
        caption of the target image (``teacher_emb``), or the example's own caption where its image is dropped."""
        w = self._distill
        if not w:
            return target
        if "teacher_emb" not in batch:
            raise KeyError(f"batch has no 'teacher_emb' (keys: {sorted(batch)}); ip_adapter.distill needs batches "
                           "with 'teacher_input_ids' / 'teacher_attention_mask' (the target's full caption)")
        teacher_ctx = jnp.asarray(batch["teacher_emb"], context.dtype)
        if self._image_dropout > 0:
            keep = self._keep_image(rng, x_in.shape[0])[:, None, None]
            teacher_ctx = jnp.where(keep, teacher_ctx, context)
        teacher = jax.lax.stop_gradient(model.unet(x_in, t, teacher_ctx).astype(jnp.float32))
        return (1.0 - w) * target + w * teacher

    def eval_step(self, model, batch):
        # eval (read while tracing): every example keeps its image condition; the loss is the plain denoising one
        self._image_dropout, self._distill = 0.0, 0.0
        try:
            return super().eval_step(model, batch)
        finally:
            self._image_dropout, self._distill = self.cfg.ip_adapter.image_dropout, self.cfg.ip_adapter.distill

    def _wrap(self, it):
        it = super()._wrap(it)
        if it is not None and self.image_cache is not None:
            it = CachedIterator(it, self.image_cache, ("cond_image",), "image_emb", drops=("cond_image",))
        if it is not None and self._distill > 0:
            it = CachedIterator(it, self.cache, ("teacher_input_ids", "teacher_attention_mask"), "teacher_emb",
                                drops=("teacher_input_ids", "teacher_attention_mask"))
        return it


def save_adapter(unet, run_dir: str | os.PathLike, image_encoder: str) -> Path:
    """Write ``unet``'s adapter (diffusers format) and ``image_encoder.json`` to ``RUN_DIR/ip_adapter``."""
    out = adapter_dir(run_dir)
    path = save_ip_adapter(unet, out, weight_name=WEIGHT_NAME)
    plus = unet.ip_adapter.plus
    info = {"image_encoder": os.path.abspath(image_encoder), "kind": "canvas_jax.image_text",
            "image_tokens": "feature_map" if plus else "embeds",
            "usage": ("load_adapter_image_encoder(this folder).image_tokens(uint8) -> ip_adapter_image_embeds; "
                      "its negative_image_tokens() -> negative_ip_adapter_image_embeds") if plus else
                     "load_adapter_image_encoder(this folder).embed_images(uint8) -> ip_adapter_image_embeds"}
    tower = getattr(unet.ip_adapter, "image_encoder", None)
    if tower is not None:  # the fine-tuned tower replaces the clip run's
        save_safetensors(to_state_dict(tower), out / TOWER_WEIGHTS)
        info["tower_weights"] = TOWER_WEIGHTS
    (out / ENCODER_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return path
