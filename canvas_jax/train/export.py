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

from canvas_jax.convert.text_encoders import save_clip_text
from canvas_jax.convert.diffusers_models import save_unet, save_vae
from core_jax.text.bert import BertModel
from core_jax.text.minilm import save_bert
from canvas_jax.models.clip import CLIPTextModel
from canvas_jax.models.lora import lora_layers, remove_lora
from canvas_jax.runs import DIFFUSERS_VERSION, pipeline_components, restore_run
from canvas_jax.text_conditioning import tokenizer_folder

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt")


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
    run = restore_run(run_dir, ema=ema)
    parts = pipeline_components(run)
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
        save_clip_text(encoder, out / "text_encoder")
        classes = ("CLIPTextModel", "CLIPTokenizer")
    else:
        raise TypeError(f"cannot export text encoder {type(encoder).__name__}")
    _save_tokenizer(run.text_source, out / "tokenizer", run.manifest["max_length"])
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
