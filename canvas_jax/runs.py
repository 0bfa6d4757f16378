"""Run folders <-> models: read the models of a ``canvas-jax train`` run folder back, on its own.

A run folder holds ``config.yaml``, ``checkpoints/`` and ``models.json`` (:data:`MANIFEST`, written by the
training run): every model's architecture (``_class_name`` plus the model's config, as our pipeline format's
``config.json``), the noise schedule (a diffusers scheduler config) and the text encoder's ``source`` and
``max_length``. The checkpoint holds every weight, the frozen VAE's (and text encoder's, when not cached)
included, so a run folder copied alone samples as it did where it trained: nothing is read from ``vae.path``,
``init_from`` or the logs.

A VAE run's ``models.json`` is written when it finishes and carries the VAE's latent scale: ``scaling_factor =
1 / latent RMS`` measured by its final evaluation (unit-variance latents for the diffusion model, as SD's 0.18215
was measured for its VAE); the runs that use the VAE keep that config in their own ``models.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from canvas_jax import text_conditioning
from canvas_jax.components import Components, build_module, module_json
from canvas_jax.config import CanvasTrainConfig
from canvas_jax.diffusion import Schedule
from canvas_jax.errors import InputError
from canvas_jax.models.frozen import copy_module, freeze, unfreeze
from canvas_jax.models.latent_diffusion import LatentDiffusion
from canvas_jax.models.lora import LoRAParam, apply_lora
from core_jax import restore as core_restore

MANIFEST = "models.json"
PIPELINE_TASKS = ("text_to_image", "inpaint", "finetune", "dpo", "rl")
LORA_TASKS = ("finetune", "dpo", "rl")  # tasks that train LoRA adapters when lora.rank > 0
DIFFUSERS_VERSION = "0.30.0"


def holds_reference(cfg: CanvasTrainConfig) -> bool:
    """Whether a run's model holds a frozen copy of its base UNet (``LatentDiffusion.reference``): full-weight
    (``lora.rank=0``) DPO, and full-weight RL regularised by the KL to the base (``rl.kl_weight > 0``)."""
    return cfg.lora.rank == 0 and (cfg.task == "dpo" or (cfg.task == "rl" and cfg.rl.kl_weight > 0))


def is_run_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "config.yaml").is_file() and (p / "checkpoints").is_dir()


def load_config(run_dir: str | os.PathLike) -> CanvasTrainConfig:
    """The run's resolved config (``RUN_DIR/config.yaml``; ``train.run_dir`` set to ``run_dir``)."""
    return core_restore.load_run_config(run_dir, CanvasTrainConfig)


def scheduler_config(sched: Schedule) -> dict:
    """A noise schedule as a diffusers ``scheduler_config.json`` (a DDIMScheduler)."""
    config = {"_class_name": "DDIMScheduler", "_diffusers_version": DIFFUSERS_VERSION, **sched.to_config()}
    return {k: v for k, v in config.items() if v is not None and v != float("-inf")}


def save_manifest(run_dir: str | os.PathLike, model: nnx.Module, *, sched: Schedule | None = None,
                  text_source: str | None = None, max_length: int | None = None) -> Path:
    """Write ``RUN_DIR/models.json`` for ``model`` (a :class:`LatentDiffusion` or a VAE) on process 0."""
    parts = {"vae": model} if not isinstance(model, LatentDiffusion) else \
        {n: getattr(model, n) for n in ("unet", "vae", "text_encoder") if getattr(model, n) is not None}
    manifest = {"version": 1, "modules": {n: module_json(m) for n, m in parts.items()}}
    if sched is not None:
        manifest.update(scheduler=scheduler_config(sched), text_source=text_source, max_length=max_length)
    path = Path(run_dir) / MANIFEST
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=list) + "\n")
        tmp.replace(path)
    return path


def read_manifest(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a run folder needs the models.json its training writes (a VAE "
                                "run writes it when it finishes: finish the run, or train it again with this "
                                "version)")
    return json.loads(path.read_text(encoding="utf-8"))


class _RunStructure:
    """The checkpoint's model structure built from ``models.json`` alone (a task for :mod:`core_jax.restore`)."""

    def __init__(self, cfg: CanvasTrainConfig, manifest: dict, dtype):
        self.cfg, self.modules = cfg, manifest["modules"]
        self.train_dtype = jnp.bfloat16 if cfg.train.compute_dtype == "bfloat16" else jnp.float32
        self.dtype = dtype
        self.trainable = LoRAParam if cfg.task in LORA_TASKS and cfg.lora.rank > 0 else nnx.Param

    def _build(self, name: str, rngs: nnx.Rngs, train_dtype) -> nnx.Module:
        if name not in self.modules:
            raise InputError(f"{self.cfg.train.run_dir}/{MANIFEST} has no {name!r} model (have {sorted(self.modules)})")
        return build_module(self.modules[name], rngs=rngs, dtype=self.dtype or train_dtype)

    def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
        if self.cfg.task == "vae":
            return self._build("vae", rngs, self.train_dtype)
        unet = self._build("unet", rngs, self.train_dtype)
        if self.trainable is LoRAParam:
            apply_lora(unet, self.cfg.lora.lora_config(), rngs=rngs)
        vae = freeze(self._build("vae", rngs, jnp.float32))
        text = freeze(self._build("text_encoder", rngs, jnp.float32)) if "text_encoder" in self.modules else None
        reference = freeze(self._build("unet", rngs, self.train_dtype)) if holds_reference(self.cfg) else None
        return LatentDiffusion(unet, vae, text, reference)


@dataclasses.dataclass
class Run:
    """A restored run: its config, model (a :class:`LatentDiffusion`, or the VAE of a ``task=vae`` run; frozen
    parts as Frozen variables), ``models.json`` and checkpoint step."""

    cfg: CanvasTrainConfig
    model: nnx.Module
    manifest: dict
    step: int

    @property
    def text_source(self) -> str:
        return self.manifest["text_source"]

    def schedule(self) -> Schedule:
        return Schedule.from_config(self.manifest["scheduler"])

    def tokenizer(self):
        return text_conditioning.load_tokenizer(self.text_source, self.manifest["max_length"])

    def text_encoder(self, *, dtype=None, param_dtype=jnp.float32) -> nnx.Module:
        """The run's text encoder: from the checkpoint when the model holds it, else from its ``source``."""
        if self.model.text_encoder is not None:
            return self.model.text_encoder
        return text_conditioning.load_text_encoder(self.text_source, dtype=dtype, param_dtype=param_dtype)


def _cast(model: nnx.Module, dtype) -> None:
    for _, var in nnx.to_flat_state(nnx.state(model)):
        if jnp.issubdtype(var[...].dtype, jnp.floating):
            var.set_value(var[...].astype(dtype))


def restore_run(run_dir: str | os.PathLike, *, ema: bool = True, step: int | None = None, dtype=None,
                param_dtype=None) -> Run:
    """The run's latest (or ``step``) checkpoint: the EMA weights when the run kept them. ``dtype``: the models'
    compute dtype (default: as trained); ``param_dtype``: cast the weights to it (default: float32 as saved)."""
    cfg = load_config(run_dir)
    manifest = read_manifest(run_dir)
    restored = core_restore.restore_run(cfg, _RunStructure(cfg, manifest, dtype), which="latest", step=step)
    model = restored.model(ema=ema)
    if param_dtype is not None and jnp.dtype(param_dtype) != jnp.float32:
        _cast(model, param_dtype)
    return Run(cfg, model, manifest, restored.step)


def pipeline_components(run: Run, *, dtype=None, param_dtype=jnp.float32) -> Components:
    """The :class:`~canvas_jax.components.Components` of a text-to-image, inpainting or fine-tuning run."""
    if run.cfg.task not in PIPELINE_TASKS:
        raise InputError(f"{run.cfg.train.run_dir} is a task={run.cfg.task!r} run; a pipeline needs a "
                         f"{', '.join(PIPELINE_TASKS)} run (a VAE alone: canvas_jax.convert.diffusers_models.save_vae)")
    m = run.model
    index = {"_class_name": "StableDiffusionInpaintPipeline" if run.cfg.task == "inpaint" else
             "StableDiffusionPipeline", "force_zeros_for_empty_prompt": False}
    encoder = unfreeze(copy_module(run.text_encoder(dtype=dtype, param_dtype=param_dtype)))
    return Components(unet=m.unet, vae=unfreeze(copy_module(m.vae)), text_encoder=encoder, tokenizer=run.tokenizer(),
                      scheduler_config=run.manifest["scheduler"], model_index=index)


def run_components(run_dir: str | os.PathLike, *, ema: bool = True, dtype=jnp.float32,
                   param_dtype=jnp.float32) -> Components:
    """A run folder's pipeline components (its latest checkpoint; the EMA UNet when the run kept one), so
    ``Pipeline.from_pretrained(run_dir)`` needs no export; models in ``dtype`` with ``param_dtype`` weights."""
    run = restore_run(run_dir, ema=ema, dtype=dtype, param_dtype=param_dtype)
    return pipeline_components(run, dtype=dtype, param_dtype=param_dtype)


def load_vae(path: str | os.PathLike):
    """A trained AutoencoderKL from a ``task=vae`` run folder (with the latent scale its run measured) or a
    diffusers vae / pipeline folder."""
    from canvas_jax.convert.diffusers_models import load_vae as load_diffusers_vae

    if not path:
        raise InputError("vae.path is empty: the diffusion tasks need a trained VAE (a `task=vae` run folder or a "
                         "diffusers vae folder; or set vae.pretrain_steps to train one first)")
    if is_run_dir(path):
        cfg = load_config(path)
        if cfg.task != "vae":
            raise InputError(f"vae.path={str(path)!r} is a task={cfg.task!r} run; expected a task=vae run")
        return restore_run(path).model
    if not Path(path).is_dir():
        raise FileNotFoundError(f"vae.path={str(path)!r} does not exist; expected a task=vae run folder or a "
                                "diffusers vae folder")
    return load_diffusers_vae(path)
