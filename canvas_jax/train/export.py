"""Export a trained text-to-image, inpainting or fine-tuning run as a diffusers-format pipeline folder.

``export_pipeline(run_dir, out_dir)`` writes ``unet/`` and ``vae/`` (``config.json`` +
``diffusion_pytorch_model.safetensors``), ``text_encoder/`` (``config.json`` + ``model.safetensors``: a
transformers ``BertModel`` for MiniLM, or ``CLIPTextModel``), ``tokenizer/`` (the encoder's tokenizer
files, ``model_max_length`` set to the training length), ``scheduler/scheduler_config.json`` and
``model_index.json``. The UNet is the EMA weights when the run kept them (a LoRA fine-tune's adapters
merged in). Captions were dropped to "" for guidance, so ``force_zeros_for_empty_prompt`` is false: the
negative is the encoded empty prompt.
A BERT text encoder is conditioned as in training: ``encoder(input_ids, attention_mask).last_hidden_state``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from canvas_jax.convert import text_encoders as te
from canvas_jax.convert.diffusers_models import save_unet, save_vae
from canvas_jax.convert.state_dict import to_state_dict
from canvas_jax.models.bert import BertModel
from canvas_jax.models.clip import CLIPTextModel
from canvas_jax.models.lora import lora_layers, remove_lora
from canvas_jax.models.frozen import unfreeze
from canvas_jax.runs import restore_run
from canvas_jax.train.t2i_task import copy_module
from canvas_jax.text_conditioning import tokenizer_folder

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt")
DIFFUSERS_VERSION = "0.30.0"


def save_bert(model: BertModel, folder: str | os.PathLike) -> Path:
    """``config.json`` + ``model.safetensors`` that ``transformers.BertModel.from_pretrained`` and
    :func:`canvas_jax.convert.text_encoders.load_bert` read."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**model.config.to_dict(), "architectures": ["BertModel"], "model_type": "bert"}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    te.save_safetensors(to_state_dict(model), folder / "model.safetensors")
    return folder


def _save_tokenizer(source: str, folder: Path, max_length: int) -> None:
    src = tokenizer_folder(source)
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, folder / name)
    cfg_path = folder / "tokenizer_config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    config["model_max_length"] = max_length
    cfg_path.write_text(json.dumps(config, indent=2) + "\n")


def scheduler_config(task) -> dict:
    """The run's noise schedule as a diffusers ``scheduler_config.json`` (a DDIMScheduler)."""
    config = {"_class_name": "DDIMScheduler", "_diffusers_version": DIFFUSERS_VERSION, **task.sched.to_config()}
    return {k: v for k, v in config.items() if v is not None and v != float("-inf")}


def run_components(run_dir: str | os.PathLike, *, ema: bool = True):
    """The :class:`canvas_jax.components.Components` of a text-to-image or inpainting run folder (its latest
    checkpoint; the EMA UNet when the run kept one), so ``Pipeline.from_pretrained(run_dir)`` needs no export."""
    from canvas_jax.components import Components

    cfg, task, model = restore_run(run_dir, ema=ema)
    if cfg.task not in ("text_to_image", "inpaint", "finetune"):
        raise ValueError(f"{run_dir} is a task={cfg.task!r} run; a pipeline needs a text_to_image, inpaint or "
                         "finetune run (a VAE alone: canvas_jax.convert.diffusers_models.save_vae)")
    encoder = unfreeze(copy_module(task.text_encoder))
    index = {"_class_name": "StableDiffusionInpaintPipeline" if cfg.task == "inpaint" else "StableDiffusionPipeline",
             "force_zeros_for_empty_prompt": False}
    return Components(unet=model.unet, vae=unfreeze(copy_module(model.vae)), text_encoder=encoder,
                      tokenizer=task.tokenizer, scheduler_config=scheduler_config(task), model_index=index), task


def export_pipeline(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, ema: bool = True,
                    overwrite: bool = False) -> Path:
    """Write the run's pipeline (see the module docstring) to ``out_dir``; returns it."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")
        shutil.rmtree(out)
    parts, task = run_components(run_dir, ema=ema)
    out.mkdir(parents=True, exist_ok=True)
    if lora_layers(parts.unet):  # a LoRA fine-tune: plain layers with the adapters folded in
        remove_lora(parts.unet, merge=True)
    save_unet(parts.unet, out / "unet")
    save_vae(parts.vae, out / "vae")
    encoder = parts.text_encoder
    if isinstance(encoder, BertModel):
        save_bert(encoder, out / "text_encoder")
        classes = ("BertModel", "BertTokenizerFast")
    elif isinstance(encoder, CLIPTextModel):
        te.save_clip_text(encoder, out / "text_encoder")
        classes = ("CLIPTextModel", "CLIPTokenizer")
    else:
        raise TypeError(f"cannot export text encoder {type(encoder).__name__}")
    _save_tokenizer(task.text_source, out / "tokenizer", task.tokenizer.model_max_length)
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(parts.scheduler_config, indent=2) + "\n")
    index = {
        **parts.model_index, "_diffusers_version": DIFFUSERS_VERSION,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", classes[0]], "tokenizer": ["transformers", classes[1]],
        "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False,
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out
