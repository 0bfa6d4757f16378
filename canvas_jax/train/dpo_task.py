"""Diffusion-DPO (``task=dpo``, Wallace et al., 2023) on preference pairs, from the model of ``init_from``.

Each batch holds pairs (``chosen``, ``rejected`` images of one ``caption``; a ``canvas-jax data build --kind
preferences`` or ``canvas-jax rl collect`` dataset in ``data.dataset``). Both images are encoded, noised with the
same noise to the same timestep, and denoised by the policy and by the frozen reference (the ``init_from`` UNet);
the loss is :func:`canvas_jax.rl.objectives.diffusion_dpo_loss` on the four per-example errors with ``dpo.beta``.

The reference is held once: with LoRA (``lora.rank > 0``) it is the policy itself with its adapters switched off
(their scale set to 0 for the reference's forward pass), so no second UNet exists; with full fine-tuning
(``lora.rank=0``) it is a frozen copy in the model (``LatentDiffusion.reference``, sharded like the policy by the
same logical axes, never updated, checkpointed with the run). Metrics: ``dpo_loss``, ``implicit_acc``,
``reward_margin`` and both errors; a test split of the dataset is evaluated the same way.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from flax import nnx

from canvas_jax.diffusion import add_noise, training_target
from canvas_jax.models.frozen import freeze
from canvas_jax.models.latent_diffusion import LatentDiffusion
from canvas_jax.models.lora import lora_layers
from canvas_jax.rl.objectives import diffusion_dpo_loss
from canvas_jax.runs import holds_reference
from canvas_jax.train.finetune_task import FinetuneTask, unet_with_dtype
from canvas_jax.train.t2i_task import vae_latents
from core_jax.config import ConfigError
from core_jax.task import DataContext


def preference_data(cfg, tokenizer, ctx: DataContext, split: str, with_masks: bool):
    """The default :data:`~canvas_jax.train.data.DataFn` of ``task=dpo``: pairs from the preference dataset
    ``cfg.data.dataset`` (``None`` for a split it lacks)."""
    from canvas_jax.data.loader import resolve_dataset_dir
    from canvas_jax.data.preferences import make_preference_iterator
    from core_jax.data import split_names

    folder = resolve_dataset_dir(cfg.data.dataset)
    if split not in split_names(folder):
        return None
    train = split == "train"
    return make_preference_iterator(folder, tokenizer, resolution=cfg.data.image_size, batch_size=ctx.batch_size,
                                    split=split, max_length=cfg.text_encoder.max_length,
                                    random_flip=cfg.data.random_flip and train, seed=ctx.seed, shuffle=train,
                                    num_epochs=None if train else 1, shard_index=ctx.process_index,
                                    shard_count=ctx.process_count)


class ReferenceTask(FinetuneTask):
    """Fine-tuning of ``init_from``'s UNet against a frozen reference (its starting point): with LoRA the policy
    with its adapters off, with full weights a frozen copy held in the model (:func:`canvas_jax.runs.holds_reference`)."""

    def create_model(self, rngs: nnx.Rngs) -> LatentDiffusion:
        model = super().create_model(rngs)
        if not holds_reference(self.cfg):
            return model
        reference = freeze(unet_with_dtype(self.base_unet, self.dtype))
        return LatentDiffusion(model.unet, model.vae, model.text_encoder, reference)

    @contextlib.contextmanager
    def reference_unet(self, model: LatentDiffusion):
        """Within the block, the reference UNet: ``model.reference``, or ``model.unet`` with its adapters off."""
        if model.reference is not None:
            yield model.reference
            return
        layers = list(lora_layers(model.unet).values())
        scales = [layer.scale[...] for layer in layers]
        for layer in layers:
            layer.scale[...] = jnp.zeros_like(layer.scale[...])
        try:
            yield model.unet
        finally:
            for layer, scale in zip(layers, scales):
                layer.scale[...] = scale

    def _reference(self, model: LatentDiffusion, x_t, t, ctx) -> jax.Array:
        with self.reference_unet(model) as unet:
            return unet(x_t, t, ctx)


class DPOTask(ReferenceTask):
    """Diffusion-DPO of ``init_from``'s UNet: LoRA adapters (reference = adapters off) or every weight."""

    def __init__(self, cfg, *, data_fn=None):
        if cfg.vae.cache_latents:
            raise ConfigError("config key 'vae.cache_latents': task=dpo encodes both images of each pair in the "
                              "step; set vae.cache_latents=false")
        super().__init__(cfg, data_fn=data_fn or preference_data)

    def errors(self, model: LatentDiffusion, batch, rng: jax.Array) -> tuple[jax.Array, ...]:
        """Per-pair denoising errors (policy chosen, policy rejected, reference chosen, reference rejected)."""
        for key in ("chosen", "rejected"):
            if key not in batch:
                raise KeyError(f"batch has no {key!r} (keys: {sorted(batch)}); task=dpo reads a preference dataset "
                               "(canvas-jax data build --kind preferences)")
        r_w, r_l, r_noise, r_t = jax.random.split(rng, 4)
        x0 = jnp.concatenate([vae_latents(model.vae, batch["chosen"], r_w), vae_latents(model.vae, batch["rejected"], r_l)])
        b = batch["chosen"].shape[0]
        noise = jnp.tile(jax.random.normal(r_noise, (b, *x0.shape[1:]), jnp.float32), (2, 1, 1, 1))
        t = jnp.tile(jax.random.randint(r_t, (b,), 0, self.sched.num_train_timesteps), 2)
        x_t, target = add_noise(self.sched, x0, noise, t), training_target(self.sched, x0, noise, t)
        ctx = jnp.concatenate([self.context(model, batch)] * 2)
        pred = model.unet(x_t, t, ctx).astype(jnp.float32)
        ref = jax.lax.stop_gradient(self._reference(model, x_t, t, ctx).astype(jnp.float32))
        err, ref_err = (jnp.mean(jnp.square(p - target), axis=(1, 2, 3)) for p in (pred, ref))
        return err[:b], err[b:], ref_err[:b], ref_err[b:]

    def loss(self, model: LatentDiffusion, batch, rng):
        return diffusion_dpo_loss(*self.errors(model, batch, rng), beta=self.cfg.dpo.beta)

    def eval_step(self, model: LatentDiffusion, batch):
        err_w, err_l, ref_w, ref_l = self.errors(model, batch, jax.random.key(1234))
        inside = -0.5 * self.cfg.dpo.beta * ((err_w - err_l) - (ref_w - ref_l))
        return {"loss": -jnp.sum(jax.nn.log_sigmoid(inside)), "implicit_acc": jnp.sum((inside > 0).astype(jnp.float32)),
                "count": jnp.float32(inside.shape[0])}
