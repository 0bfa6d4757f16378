"""The task of a run config: ``make_task(cfg)`` picks VAE, text-to-image, inpainting, fine-tuning, DPO, clip,
IP-Adapter, reward model or policy-gradient RL."""

from __future__ import annotations


def make_task(cfg, *, data_fn=None):
    if cfg.task == "vae":
        from canvas_jax.train.vae_task import VAETask

        return VAETask(cfg, data_fn=data_fn)
    if cfg.task == "text_to_image":
        from canvas_jax.train.t2i_task import TextToImageTask

        return TextToImageTask(cfg, data_fn=data_fn)
    if cfg.task == "inpaint":
        from canvas_jax.train.inpaint_task import InpaintTask

        return InpaintTask(cfg, data_fn=data_fn)
    if cfg.task == "finetune":
        from canvas_jax.train.finetune_task import FinetuneTask

        return FinetuneTask(cfg, data_fn=data_fn)
    if cfg.task == "dpo":
        from canvas_jax.train.dpo_task import DPOTask

        return DPOTask(cfg, data_fn=data_fn)
    if cfg.task == "clip":
        from canvas_jax.train.contrastive_task import ContrastiveTask

        return ContrastiveTask(cfg, data_fn=data_fn)
    if cfg.task == "ip_adapter":
        from canvas_jax.train.ip_adapter_task import IPAdapterTask

        return IPAdapterTask(cfg, data_fn=data_fn)
    if cfg.task == "reward_model":
        from canvas_jax.train.reward_model_task import RewardModelTask

        return RewardModelTask(cfg, data_fn=data_fn)
    if cfg.task == "rl":
        from canvas_jax.train.rl_task import RLTask

        return RLTask(cfg, data_fn=data_fn)
    raise ValueError(f"config key 'task': {cfg.task!r}; expected 'vae', 'text_to_image', 'inpaint', 'finetune', "
                     "'dpo', 'clip', 'ip_adapter', 'reward_model' or 'rl'")
