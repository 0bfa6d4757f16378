"""Fine-tuning (``task=finetune``): the text-to-image loss on the UNet of ``init_from``, LoRA or full.

With ``lora.rank > 0`` the base UNet is wrapped by :func:`canvas_jax.models.lora.apply_lora` (``lora.targets``,
``lora.alpha``): only the :class:`~canvas_jax.models.lora.LoRAParam` factors are trained (the task's
``trainable`` filter), so the optimizer state and the EMA hold the adapters alone and the base weights ride
along frozen in the state. The adapters are written to ``RUN_DIR/lora/pytorch_lora_weights.safetensors``
(diffusers / PEFT key names; the EMA weights when the run keeps them) at every checkpoint and at the end
(:func:`canvas_jax.train.hooks.make_hooks`). With ``lora.rank=0`` every UNet weight trains.
"""

from __future__ import annotations

import os
from pathlib import Path

from flax import nnx

from canvas_jax.convert.lora import WEIGHT_NAME
from canvas_jax.models.lora import LoRAParam, apply_lora
from canvas_jax.models.unet import UNet2DConditionModel
from canvas_jax.train.init_from import InitFromTask


def lora_file(run_dir: str | os.PathLike) -> Path:
    """Where a LoRA run's adapters land: ``RUN_DIR/lora/pytorch_lora_weights.safetensors``."""
    return Path(run_dir) / "lora" / WEIGHT_NAME


def unet_with_dtype(base: UNet2DConditionModel, dtype) -> UNet2DConditionModel:
    """A new UNet module holding ``base``'s weights that computes in ``dtype``."""
    config = {k: v for k, v in base.config.items() if not k.startswith("_")}
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: UNet2DConditionModel(config, rngs=nnx.Rngs(0), dtype=dtype)))
    return nnx.merge(graphdef, nnx.state(base), copy=True)


class FinetuneTask(InitFromTask):
    """Text-to-image training of ``init_from``'s UNet: LoRA adapters alone, or every weight (``lora.rank=0``)."""

    def __init__(self, cfg, *, data_fn=None):
        super().__init__(cfg, data_fn=data_fn)
        self.trainable = LoRAParam if cfg.lora.rank > 0 else nnx.Param

    def unet_config(self) -> dict:
        return self.base_unet_config()

    def build_unet(self, rngs: nnx.Rngs) -> UNet2DConditionModel:
        unet = unet_with_dtype(self.base_unet, self.dtype)
        if self.cfg.lora.rank > 0:
            apply_lora(unet, self.cfg.lora.lora_config(), rngs=rngs)
        return unet
