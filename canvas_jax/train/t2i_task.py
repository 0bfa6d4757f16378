"""Text-to-image latent diffusion (``task=text_to_image``) on the shared loop.

The trained module is :class:`~canvas_jax.models.latent_diffusion.LatentDiffusion`: the UNet (its ``nnx.Param``
are the only trained weights, so the optimizer state and EMA cover only the UNet), the frozen VAE, and, when
text embeddings are not cached, the frozen text encoder (both as :class:`~canvas_jax.models.frozen.Frozen` variables). With
``text_encoder.cache`` the data iterator carries ``text_emb`` and the encoder never runs in the step; with
``vae.cache_latents`` it carries the VAE posterior's ``latent_moments`` and the VAE encoder never runs either.

Loss: ``x0 = (vae.encode(image).sample() - shift) * scale``; noise (plus optional offset noise), uniform
integer timesteps, ``add_noise``, the schedule's ``training_target`` (epsilon or v), per-example MSE with
Min-SNR-gamma weights ``min(snr, gamma) / snr`` (epsilon) or ``min(snr, gamma) / (snr + 1)`` (v).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from canvas_jax import text_conditioning
from canvas_jax.diffusion import Schedule, add_noise, snr, training_target
from canvas_jax.models.frozen import copy_module, freeze
from canvas_jax.models.latent_diffusion import LatentDiffusion
from canvas_jax.models.unet import UNet2DConditionModel, unet_config
from canvas_jax.models.vae import AutoencoderKL, DiagonalGaussian
from canvas_jax.runs import load_vae
from canvas_jax.train.data import DataFn, canvas_data
from canvas_jax.train.encode_cache import (
    CachedIterator,
    latent_cache,
    text_embedding_cache,
)
from core_jax.task import DataContext


def make_schedule(cfg) -> Schedule:
    return Schedule.from_config({**cfg.diffusion.scheduler, "prediction_type": cfg.diffusion.prediction_type})


def min_snr_weights(sched: Schedule, t: jax.Array, gamma: float | None) -> jax.Array:
    """Per-example loss weights of Min-SNR-gamma (Hang et al. 2023) for the schedule's prediction type."""
    if gamma is None:
        return jnp.ones(t.shape, jnp.float32)
    s = snr(sched, t).astype(jnp.float32)
    clipped = jnp.minimum(s, gamma)
    return clipped / (s + 1.0) if sched.prediction_type == "v_prediction" else clipped / s


def vae_latents(vae: AutoencoderKL, image: jax.Array, rng: jax.Array | None,
                moments: jax.Array | None = None) -> jax.Array:
    """Scaled latents of images in [-1, 1] (a posterior sample, or the mode when ``rng`` is None); from the
    posterior's cached ``moments`` (mean and log-variance) when given instead of running the encoder."""
    post = vae.encode(image.astype(jnp.float32)) if moments is None else DiagonalGaussian.from_moments(moments)
    z = post.mode() if rng is None else post.sample(rng)
    return jax.lax.stop_gradient((z.astype(jnp.float32) - vae.shift_factor) * vae.scaling_factor)


class TextToImageTask:
    """A :class:`core_jax.task.Task` for latent diffusion with a frozen VAE and text encoder."""

    in_channels_extra = 0  # extra UNet input channels (inpainting: mask + masked-image latents)

    def __init__(self, cfg, *, data_fn: DataFn | None = None):
        if cfg.diffusion.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"diffusion.prediction_type={cfg.diffusion.prediction_type!r}: expected 'epsilon' or "
                             "'v_prediction'")
        self.cfg = cfg
        self.data_fn = data_fn or canvas_data
        self.dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32
        self.sched = make_schedule(cfg)
        self._load_frozen()
        self.cache = text_embedding_cache(self.text_encoder, cfg.text_encoder.cache_size)
        self.latent_cache = latent_cache(self.vae, cfg.vae.cache_size) if cfg.vae.cache_latents else None
        self._check_shapes()

    # ------------------------------------------------------------------ parts
    def _load_frozen(self) -> None:
        """Sets ``self.vae``, ``self.text_encoder``, ``self.text_source``, ``self.tokenizer``."""
        cfg = self.cfg
        self.vae = freeze(load_vae(cfg.vae.path))
        self.text_source = cfg.text_encoder.source
        self.text_encoder = freeze(text_conditioning.load_text_encoder(self.text_source))
        self.tokenizer = text_conditioning.load_tokenizer(self.text_source, cfg.text_encoder.max_length)

    def unet_config(self) -> dict:
        """The config's UNet; ``sample_size`` (latent side, the pipeline's default image size) from the data."""
        return {"sample_size": self.cfg.data.image_size // self.vae.downsample_factor, **self.cfg.unet}

    def build_unet(self, rngs: nnx.Rngs) -> UNet2DConditionModel:
        return UNet2DConditionModel(self.unet_config(), rngs=rngs, dtype=self.dtype)

    def _check_shapes(self) -> None:
        ucfg = unet_config(self.unet_config())
        latent, d = self.vae.config["latent_channels"], text_conditioning.hidden_size(self.text_encoder)
        want_in = latent + self.in_channels_extra
        if ucfg["in_channels"] != want_in or ucfg["out_channels"] != latent:
            raise ValueError(f"unet in_channels={ucfg['in_channels']} / out_channels={ucfg['out_channels']} do not fit "
                             f"the VAE's latent_channels={latent}: expected in_channels={want_in}, "
                             f"out_channels={latent}")
        ctx = ucfg["cross_attention_dim"]
        ctx = ctx if isinstance(ctx, int) else ctx[0]
        if ctx != d:
            raise ValueError(f"unet.cross_attention_dim={ctx} does not match the text encoder "
                             f"{self.text_source!r} (hidden size {d}): set unet.cross_attention_dim={d}")

    # ------------------------------------------------------------------ Task
    def create_model(self, rngs: nnx.Rngs) -> LatentDiffusion:
        text = None if self.cfg.text_encoder.cache else copy_module(self.text_encoder)
        return LatentDiffusion(self.build_unet(rngs), copy_module(self.vae), text)

    def context(self, model: LatentDiffusion, batch) -> jax.Array:
        if "text_emb" in batch:
            return batch["text_emb"]
        if model.text_encoder is None:
            raise KeyError("batch has no 'text_emb' and the model holds no text encoder (text_encoder.cache is on: "
                           "wrap the data with CachedIterator)")
        return text_conditioning.encode(model.text_encoder, batch["input_ids"], batch["attention_mask"])

    def extra_inputs(self, model: LatentDiffusion, batch, latents: jax.Array) -> jax.Array | None:
        return None

    def unet_kwargs(self, model: LatentDiffusion, batch, rng: jax.Array) -> dict:
        """Further keyword arguments of the UNet call (IP-Adapter: ``ip_tokens``)."""
        return {}

    def teacher_target(self, model: LatentDiffusion, batch, x_in: jax.Array, t: jax.Array, context: jax.Array,
                       target: jax.Array, rng: jax.Array) -> jax.Array:
        """The UNet's training target (the schedule's ``target`` here; IP-Adapter distillation mixes in the base
        model's prediction). ``rng`` is the one :meth:`unet_kwargs` got."""
        return target

    def per_example_loss(self, model: LatentDiffusion, batch, rng: jax.Array) -> jax.Array:
        cfg, sched = self.cfg.diffusion, self.sched
        if "image" not in batch:
            raise KeyError(f"batch has no 'image' (keys: {sorted(batch)}); expected float32 [B, H, W, 3] in [-1, 1]")
        r_post, r_noise, r_off, r_t = jax.random.split(rng, 4)
        x0 = vae_latents(model.vae, batch["image"], r_post, batch.get("latent_moments"))
        b, c = x0.shape[0], x0.shape[-1]
        noise = jax.random.normal(r_noise, x0.shape, jnp.float32)
        if cfg.offset_noise:
            noise = noise + cfg.offset_noise * jax.random.normal(r_off, (b, 1, 1, c), jnp.float32)
        t = jax.random.randint(r_t, (b,), 0, sched.num_train_timesteps)
        x_t = add_noise(sched, x0, noise, t)
        target = training_target(sched, x0, noise, t)
        extra = self.extra_inputs(model, batch, x0)
        x_in = x_t if extra is None else jnp.concatenate([x_t, extra], axis=-1)
        r_kwargs = jax.random.fold_in(rng, 7)
        kwargs = self.unet_kwargs(model, batch, r_kwargs)
        context = self.context(model, batch)
        target = self.teacher_target(model, batch, x_in, t, context, target, r_kwargs)
        pred = model.unet(x_in, t, context, **kwargs).astype(jnp.float32)
        mse = jnp.mean(jnp.square(pred - target), axis=(1, 2, 3))
        return mse, min_snr_weights(sched, t, cfg.min_snr_gamma)

    def loss(self, model: LatentDiffusion, batch, rng):
        mse, w = self.per_example_loss(model, batch, rng)
        return jnp.mean(w * mse), {"mse": jnp.mean(mse)}

    def eval_step(self, model: LatentDiffusion, batch):
        mse, w = self.per_example_loss(model, batch, jax.random.key(1234))
        return {"loss": jnp.sum(w * mse), "mse": jnp.sum(mse), "count": jnp.float32(mse.shape[0])}

    # ------------------------------------------------------------------ data
    def _wrap(self, it):
        if it is not None and self.cfg.text_encoder.cache:
            it = CachedIterator(it, self.cache, ("input_ids", "attention_mask"), "text_emb",
                                drops=("input_ids", "attention_mask"))
        if it is not None and self.latent_cache is not None:
            it = CachedIterator(it, self.latent_cache, ("image",), "latent_moments")
        return it

    def train_data(self, ctx: DataContext):
        return self._wrap(self.data_fn(self.cfg, self.tokenizer, ctx, "train", self.in_channels_extra > 0))

    def eval_data(self, ctx: DataContext):
        return self._wrap(self.data_fn(self.cfg, self.tokenizer, ctx, "test", self.in_channels_extra > 0))
