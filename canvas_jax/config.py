"""Typed run configs for the canvas training tasks (``canvas-jax train --config ... key.sub=value``).

One schema serves every task; ``task`` picks which one runs:

- ``vae``: train ``vae.config`` (a diffusers AutoencoderKL config dict) on the images.
- ``text_to_image``: latent diffusion of ``unet`` (a diffusers UNet config dict) with the frozen VAE from
  ``vae.path`` and the frozen text encoder ``text_encoder.source``.
- ``inpaint``: fine-tune a 9-channel UNet initialised from ``init_from`` (a text-to-image run folder or a
  diffusers pipeline folder), with random masks.
- ``finetune``: train the UNet of ``init_from`` further with the text-to-image loss: LoRA adapters alone
  (``lora.rank > 0``) or every UNet weight (``lora.rank=0``).
- ``dpo``: Diffusion-DPO of the UNet of ``init_from`` on the preference pairs of ``data.dataset`` (``dpo.beta``;
  LoRA adapters or every weight, as ``finetune``).
- ``clip``: an image-text embedding model (``clip``: a small CNN image tower and a projection of the frozen
  ``text_encoder``'s mean-pooled states) trained contrastively on the captioned images.
- ``reward_model``: a Bradley-Terry reward model (the ``clip`` section's image tower and text projection, fused to
  a scalar) trained on the preference pairs of ``data.dataset``.
- ``rl``: multi-reward policy-gradient fine-tuning (DDPO-style, ``rl``) of the UNet of ``init_from``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from canvas_jax.models.image_text import ImageTextConfig
from canvas_jax.models.lora import LoRAConfig
from core_jax.config import ConfigError
from core_jax.loop import TrainConfig
from core_jax.mesh import MeshConfig
from core_jax.optim import OptimConfig

TASKS = ("vae", "text_to_image", "inpaint", "finetune", "dpo", "clip", "ip_adapter", "reward_model", "rl")


def _tiny_vae() -> dict[str, Any]:
    return {"block_out_channels": [32, 64], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 16,
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
            "scaling_factor": 1.0}


def _tiny_unet() -> dict[str, Any]:
    return {"block_out_channels": [64, 128], "layers_per_block": 1, "norm_num_groups": 16,
            "cross_attention_dim": 384, "attention_head_dim": 4,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}


def _default_scheduler() -> dict[str, Any]:
    return {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


@dataclasses.dataclass
class DataConfig:
    dataset: str = "shapes"  # "shapes" (built-in, built under dir on first use) or a dataset folder
    dir: str = "out/canvas_data"
    image_size: int = 32
    num_examples: int = 20000  # shapes: training examples to build
    caption_dropout: float = 0.1  # probability of an empty caption (classifier-free guidance)
    random_flip: bool = False  # off by default: Shapes captions name left and right
    masks: Literal["rectangle", "brush", "outpaint", "mixed"] = "mixed"  # inpaint task
    worker_count: int = 0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # passed on to the dataset builder


@dataclasses.dataclass
class VAEConfig:
    path: str = ""  # a trained VAE: a `task=vae` run folder or a diffusers vae / pipeline folder
    config: dict[str, Any] = dataclasses.field(default_factory=_tiny_vae)  # architecture when training one
    kl_weight: float = 1e-6
    recon_loss: Literal["l1", "l2"] = "l1"
    pretrain_steps: int = 0  # text_to_image: train a VAE into vae.path first when it holds none
    pretrain_learning_rate: float | None = None  # that VAE run's peak learning rate (None: optim.learning_rate)
    cache_latents: bool = False  # encode each distinct training image once, outside the step (no random crops)
    cache_size: int = 50000  # images kept (least recently used evicted); ~h*w*2c*4 bytes each


@dataclasses.dataclass
class TextEncoderConfig:
    source: str = "minilm"  # "minilm" (the packaged all-MiniLM-L6-v2) or a BertModel / CLIPTextModel folder
    max_length: int = 32  # tokens (padded / truncated); CLIP checkpoints use 77
    cache: bool = True  # encode each distinct caption once, outside the train step
    cache_size: int = 20000  # most captions kept (least recently used evicted); ~T*D*4 bytes each


@dataclasses.dataclass
class DiffusionConfig:
    scheduler: dict[str, Any] = dataclasses.field(default_factory=_default_scheduler)  # diffusers scheduler config
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    min_snr_gamma: float | None = 5.0  # Min-SNR-gamma loss weighting (None = plain MSE)
    offset_noise: float = 0.0  # add this times a per-channel constant noise (brightness range)


@dataclasses.dataclass
class SamplingConfig:
    every: int = 0  # steps between sample grids (0 = only at the end)
    prompts: list[str] = dataclasses.field(default_factory=list)  # empty: the first captions of the data
    num_prompts: int = 8
    sampler: str = "dpmpp_2m"
    num_steps: int = 20
    guidance_scale: float = 3.0
    seed: int = 0
    plot_every: int = 0  # steps between loss-curve PNGs (0 = only at the end)


@dataclasses.dataclass
class LoRATrainConfig:
    """``task=finetune``: LoRA adapters on the UNet (``rank > 0``) or full fine-tuning (``rank=0``)."""

    rank: int = 4  # 0 = full fine-tuning of every UNet parameter
    alpha: float | None = None  # the branch is scaled by alpha / rank; None = rank (PEFT's default)
    # presets (attention, conv, ff, time: canvas_jax.models.lora.PRESETS) or regexes over UNet module paths
    targets: list[str] = dataclasses.field(default_factory=lambda: list(LoRAConfig().targets))

    def __post_init__(self):
        if self.rank < 0:
            raise ConfigError(f"config key 'lora.rank': {self.rank!r}; expected 0 (full fine-tuning) or a positive "
                              "LoRA rank such as 4 or 8")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"config key 'lora.alpha': {self.alpha!r}; expected a positive number (or null: "
                              "alpha = rank)")
        if self.rank and not self.targets:
            raise ConfigError("config key 'lora.targets': empty; expected presets (attention, conv, ff, time) or "
                              "regular expressions over UNet module paths")

    def lora_config(self) -> LoRAConfig:
        alpha = float(self.rank) if self.alpha is None else float(self.alpha)
        return LoRAConfig(rank=self.rank, alpha=alpha, targets=tuple(self.targets))


@dataclasses.dataclass
class DPOConfig:
    """``task=dpo``: the strength of the preference term (Diffusion-DPO's beta; the paper used 5000 for SD 1.5,
    whose per-example errors are much smaller than a tiny model's)."""

    beta: float = 1000.0

    def __post_init__(self):
        if not self.beta > 0:
            raise ConfigError(f"config key 'dpo.beta': {self.beta!r}; expected a positive number (e.g. 1000)")


@dataclasses.dataclass
class RLConfig:
    """``task=rl``: policy-gradient fine-tuning toward rewards (DDPO, Black et al., 2023, with several rewards and
    a distribution-level one as in arXiv 2401.12244). Each rollout samples ``rollout_size`` trajectories
    (``per_prompt`` of each prompt) with the current policy; ``inner_epochs`` passes over them in minibatches of
    ``train.batch_size`` follow, one optimizer step per minibatch."""

    rewards: str = "checker=1,diversity=0.1"  # canvas_jax.rl.rewards.parse_rewards spec
    train_prompts: str = "shapes"  # "shapes" (single-shape prompts without held-out pairs) or a prompts file
    eval_prompts: str = "shapes"  # "shapes" (prompts with a held-out colour/shape pair) or a prompts file
    rollout_size: int = 64  # trajectories per rollout (global)
    per_prompt: int = 8  # samples per prompt in a rollout (the diversity reward's group)
    inner_epochs: int = 2  # passes over each rollout
    sampler: str = "ddim"  # a stochastic sampler with a transition density: ddim (eta > 0), ddpm, euler_a
    num_steps: int = 10
    # share of each trajectory's noisy steps an update trains on (a random subset per minibatch, DDPO's
    # timestep_fraction): fewer UNet passes per update, the same rollouts
    timestep_fraction: float = 1.0
    eta: float = 1.0
    guidance_scale: float = 1.0
    clip_range: float = 1.0e-4  # PPO's importance-ratio clip (DDPO's default)
    adv_clip: float = 5.0  # advantages clipped to +- this
    stats_buffer: int = 32  # per-prompt reward stats: last rewards kept per prompt
    stats_min_count: int = 16  # below this many, a prompt is normalised by the rollout's stats
    kl_weight: float = 0.0  # KL of each step's Gaussian to the base model's (LoRA: adapters off)
    pretrain_weight: float = 0.0  # the base's denoising loss on data.dataset, added with this weight
    eval_per_prompt: int = 4  # held-out evaluation: samples per eval prompt (fixed seeds)
    eval_prompts_max: int = 16  # held-out evaluation: at most this many eval prompts

    def __post_init__(self):
        from canvas_jax.diffusion.samplers import LOG_PROB_SAMPLERS

        if self.sampler not in LOG_PROB_SAMPLERS or (self.sampler == "ddim" and not self.eta > 0):
            raise ConfigError(f"config key 'rl.sampler': {self.sampler!r} (rl.eta={self.eta}); expected one of "
                              f"{list(LOG_PROB_SAMPLERS)} (ddim with rl.eta > 0): a step with a transition density")
        for key in ("rollout_size", "per_prompt", "inner_epochs", "num_steps", "stats_buffer", "stats_min_count",
                    "eval_per_prompt", "eval_prompts_max"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'rl.{key}': {getattr(self, key)!r}; expected >= 1")
        if not 0.0 < self.timestep_fraction <= 1.0:
            raise ConfigError(f"config key 'rl.timestep_fraction': {self.timestep_fraction!r}; expected in (0, 1]")
        if self.rollout_size % self.per_prompt:
            raise ConfigError(f"config key 'rl.rollout_size': {self.rollout_size} must divide by rl.per_prompt "
                              f"({self.per_prompt})")
        if self.stats_min_count > self.stats_buffer:
            raise ConfigError(f"config key 'rl.stats_min_count': {self.stats_min_count}; expected <= "
                              f"rl.stats_buffer ({self.stats_buffer})")
        for key in ("clip_range", "adv_clip"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"config key 'rl.{key}': {getattr(self, key)!r}; expected a positive number")
        for key in ("kl_weight", "pretrain_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key 'rl.{key}': {getattr(self, key)!r}; expected >= 0")


@dataclasses.dataclass
class ClipConfig:
    """``task=clip``: the image-text model (:class:`~canvas_jax.models.image_text.ImageTextConfig`; its image size
    is ``data.image_size``, its text width the text encoder's) and its retrieval eval."""

    channels: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128])  # CNN stages, each halves
    embed_dim: int = 128
    text_hidden: int = 512  # the text projection's MLP width (0: linear)
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    eval_examples: int = 512  # test images per retrieval gallery (each eval batch is one gallery)

    def __post_init__(self):
        if self.eval_examples < 2:
            raise ConfigError(f"config key 'clip.eval_examples': {self.eval_examples!r}; expected at least 2 images "
                              "per retrieval gallery (e.g. 512)")

    def model_config(self, image_size: int, text_dim: int) -> ImageTextConfig:
        """The model's config; a bad value raises ConfigError naming the key."""
        try:
            return ImageTextConfig(image_size=image_size, channels=tuple(self.channels), embed_dim=self.embed_dim,
                                   text_dim=text_dim, text_hidden=self.text_hidden,
                                   init_temperature=self.init_temperature, max_logit_scale=self.max_logit_scale)
        except ValueError as err:
            raise ConfigError(f"config section 'clip' (data.image_size={image_size}): {err}") from None


@dataclasses.dataclass
class IPAdapterTrainConfig:
    """``task=ip_adapter``: an IP-Adapter trained on the frozen ``init_from`` model, conditioned on the image
    embeddings of ``image_encoder`` (a ``task=clip`` run folder) of each example's condition image."""

    image_encoder: str = "runs/clip_shapes"
    # what the adapter reads: "embeds" (the tower's pooled embedding through a plain ImageProjection) or
    # "feature_map" (its last feature map as tokens through the IP-Adapter Plus resampler)
    image_tokens: Literal["embeds", "feature_map"] = "embeds"
    num_tokens: int = 4  # image tokens the projection makes (the resampler's queries with feature_map)
    resampler_depth: int = 2  # feature_map: perceiver layers of the resampler (its width: cross_attention_dim)
    image_dropout: float = 0.1  # probability of the unconditional image branch (zero embedding / zero image's tokens)
    # probability that a training example becomes a composition example: one shape of the scene as the target at
    # its cell, the caption only "at the <cell>", the condition that shape rendered in another cell (Shapes data)
    composition_prob: float = 0.0
    cache_size: int = 50000  # image embeddings kept (one per distinct condition image)
    # train a copy of the clip image tower with the adapter (its weights land beside the adapter); false: frozen,
    # its embeddings / tokens cached
    train_image_encoder: bool = False
    # teacher distillation: the UNet's target becomes (1 - distill) * the denoising target + distill * the frozen
    # base model's prediction at the same noisy latents given the target image's full caption (examples whose image
    # condition is dropped: given their own caption); 0 = plain denoising. A far less noisy target than the noise.
    distill: float = 0.0
    # start each layer's to_k_ip / to_v_ip from its text to_k / to_v (as the IP-Adapter paper's training does)
    # instead of at random: image tokens then act like text states from the first step
    kv_from_text: bool = False

    def __post_init__(self):
        if self.image_tokens not in ("embeds", "feature_map"):
            raise ConfigError(f"config key 'ip_adapter.image_tokens': {self.image_tokens!r}; expected 'embeds' or "
                              "'feature_map'")
        if not 0.0 <= self.composition_prob <= 1.0:
            raise ConfigError(f"config key 'ip_adapter.composition_prob': {self.composition_prob!r}; expected a "
                              "probability in [0, 1]")
        if self.resampler_depth < 1:
            raise ConfigError(f"config key 'ip_adapter.resampler_depth': {self.resampler_depth!r}; expected >= 1")
        if not 0.0 <= self.image_dropout <= 1.0:
            raise ConfigError(f"config key 'ip_adapter.image_dropout': {self.image_dropout!r}; expected a "
                              "probability in [0, 1]")
        if self.num_tokens < 1:
            raise ConfigError(f"config key 'ip_adapter.num_tokens': {self.num_tokens!r}; expected >= 1")
        if not 0.0 <= self.distill <= 1.0:
            raise ConfigError(f"config key 'ip_adapter.distill': {self.distill!r}; expected a weight in [0, 1]")


@dataclasses.dataclass
class CanvasTrainConfig:
    task: Literal["vae", "text_to_image", "inpaint", "finetune", "dpo", "clip", "ip_adapter", "reward_model",
                  "rl"] = "text_to_image"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    vae: VAEConfig = dataclasses.field(default_factory=VAEConfig)
    text_encoder: TextEncoderConfig = dataclasses.field(default_factory=TextEncoderConfig)
    unet: dict[str, Any] = dataclasses.field(default_factory=_tiny_unet)  # diffusers UNet config (text_to_image)
    init_from: str = ""  # inpaint, finetune: a text_to_image (or finetune) run folder or a diffusers pipeline folder
    lora: LoRATrainConfig = dataclasses.field(default_factory=LoRATrainConfig)  # finetune, dpo, rl
    dpo: DPOConfig = dataclasses.field(default_factory=lambda: DPOConfig())  # dpo
    rl: RLConfig = dataclasses.field(default_factory=RLConfig)  # rl
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)  # clip; reward_model's architecture
    ip_adapter: IPAdapterTrainConfig = dataclasses.field(default_factory=IPAdapterTrainConfig)  # ip_adapter
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
