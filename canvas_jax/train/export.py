"""Export a trained text-to-image or inpainting run as a diffusers-format pipeline folder.

``export_pipeline(run_dir, out_dir)`` writes ``unet/`` and ``vae/`` (``config.json`` +
``diffusion_pytorch_model.safetensors``), ``text_encoder/`` (``config.json`` + ``model.safetensors``: a
transformers ``BertModel`` for MiniLM, or ``CLIPTextModel``), ``tokenizer/`` (the encoder's tokenizer
files, ``model_max_length`` set to the training length), ``scheduler/scheduler_config.json`` and
``model_index.json``. The UNet is the EMA weights when the run kept them. Captions were dropped to ""
for guidance, so ``force_zeros_for_empty_prompt`` is false: the negative is the encoded empty prompt.
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
from canvas_jax.train.frozen import unfreeze
from canvas_jax.train.runs import restore_run
from canvas_jax.train.t2i_task import copy_module
from canvas_jax.train.text_encoders import tokenizer_folder

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


def export_pipeline(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, ema: bool = True,
                    overwrite: bool = False) -> Path:
    """Write the run's pipeline (see the module docstring) to ``out_dir``; returns it."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")
        shutil.rmtree(out)
    cfg, task, model = restore_run(run_dir, ema=ema)
    if cfg.task not in ("text_to_image", "inpaint"):
        raise ValueError(f"{run_dir} is a task={cfg.task!r} run; export_pipeline needs text_to_image or inpaint "
                         "(a VAE alone: canvas_jax.convert.diffusers_models.save_vae)")
    out.mkdir(parents=True, exist_ok=True)
    save_unet(model.unet, out / "unet")
    save_vae(unfreeze(copy_module(model.vae)), out / "vae")
    encoder = unfreeze(copy_module(task.text_encoder))
    if isinstance(encoder, BertModel):
        save_bert(encoder, out / "text_encoder")
        classes = ("BertModel", "BertTokenizerFast")
    elif isinstance(encoder, CLIPTextModel):
        te.save_clip_text(encoder, out / "text_encoder")
        classes = ("CLIPTextModel", "CLIPTokenizer")
    else:
        raise TypeError(f"cannot export text encoder {type(encoder).__name__}")
    _save_tokenizer(task.text_source, out / "tokenizer", task.tokenizer.model_max_length)
    scheduler = {"_class_name": "DDIMScheduler", "_diffusers_version": DIFFUSERS_VERSION, **task.sched.to_config()}
    scheduler = {k: v for k, v in scheduler.items() if v is not None and v != float("-inf")}
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    index = {
        "_class_name": "StableDiffusionInpaintPipeline" if cfg.task == "inpaint" else "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", classes[0]], "tokenizer": ["transformers", classes[1]],
        "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False,
        "force_zeros_for_empty_prompt": False,
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out
