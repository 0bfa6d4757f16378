"""The starting point of the fine-tuning tasks (``inpaint``, ``finetune``): ``init_from``.

``init_from`` is a training run folder (``task=text_to_image`` or ``task=finetune``: its EMA UNet, with a LoRA
run's adapters merged in, plus its VAE, text encoder, tokenizer and noise schedule) or a diffusers pipeline
folder (``unet/``, ``vae/``, ``text_encoder/`` + ``tokenizer/`` with a BERT or CLIP encoder, and
``scheduler/scheduler_config.json`` when present; ``text_encoder.max_length`` tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

from canvas_jax.diffusion import Schedule
from canvas_jax.models.lora import lora_layers, remove_lora
from canvas_jax import text_conditioning
from canvas_jax.models.frozen import freeze
from canvas_jax.runs import is_run_dir, load_config, restore_run
from canvas_jax.train.t2i_task import TextToImageTask
from core_jax.config import ConfigError

BASE_TASKS = ("text_to_image", "finetune")  # run folders a fine-tune may start from


class InitFromTask(TextToImageTask):
    """A text-to-image task whose base UNet (``self.base_unet``), frozen VAE, text encoder, tokenizer and schedule
    come from ``cfg.init_from`` (not from ``cfg.unet`` / ``vae.path`` / ``text_encoder.source``)."""

    def _load_frozen(self) -> None:
        src = self.cfg.init_from
        if not src:
            raise ConfigError(f"config key 'init_from': empty; task={self.cfg.task} starts from a text_to_image run "
                              "folder or a diffusers pipeline folder (unet/, vae/, text_encoder/, tokenizer/)")
        if is_run_dir(src):
            base_cfg = load_config(src)
            if base_cfg.task not in BASE_TASKS:
                raise ValueError(f"init_from={src!r} is a task={base_cfg.task!r} run; expected one of {BASE_TASKS}")
            run = restore_run(src, ema=True)
            model = run.model
            if lora_layers(model.unet):  # a LoRA run: its adapters folded into the base weights
                remove_lora(model.unet, merge=True)
            self.base_unet, self.vae, self.sched = model.unet, model.vae, run.schedule()
            self.text_source, self.tokenizer = run.text_source, run.tokenizer()
            self.text_encoder = model.text_encoder if model.text_encoder is not None else \
                freeze(run.text_encoder())
        elif Path(src).is_dir():
            from canvas_jax.convert.diffusers_models import load_unet, load_vae

            self.base_unet = load_unet(src)
            self.vae = freeze(load_vae(src))
            sched_file = Path(src) / "scheduler" / "scheduler_config.json"
            if sched_file.is_file():  # the base model's noise schedule (and its prediction type when it names one)
                config = {"prediction_type": self.cfg.diffusion.prediction_type, **json.loads(sched_file.read_text())}
                self.sched = Schedule.from_config(config)
            self.text_source = str(Path(src) / "text_encoder")
            self.text_encoder = freeze(text_conditioning.load_text_encoder(self.text_source))
            self.tokenizer = text_conditioning.load_tokenizer(self.text_source, self.cfg.text_encoder.max_length)
        else:
            raise FileNotFoundError(f"init_from={src!r} does not exist; expected a text_to_image run folder or a "
                                    "diffusers pipeline folder")
        if self.base_unet.config["in_channels"] != self.vae.config["latent_channels"]:
            raise ValueError(f"init_from={src!r}: the base UNet has in_channels={self.base_unet.config['in_channels']};"
                             f" expected a text-to-image UNet with {self.vae.config['latent_channels']}")

    def base_unet_config(self) -> dict:
        """The base UNet's architecture (diffusers config keys, without the ``_`` meta keys)."""
        return {k: v for k, v in self.base_unet.config.items() if not k.startswith("_")}
