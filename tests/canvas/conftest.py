"""Session fixtures for the canvas pipeline / CLI / conversion tests: tiny random diffusers pipelines saved with
``save_pretrained`` (built once per test session; weights perturbed away from their zero initialisations)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

TINY_SIZE = 32  # image side; latents are 16 x 16 with the 2-level tiny VAE
TINY_UNET = dict(sample_size=TINY_SIZE // 2, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                 cross_attention_dim=32, attention_head_dim=4,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_VAE = dict(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                sample_size=TINY_SIZE, scaling_factor=0.18215)
TINY_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
                      skip_prk_steps=True, steps_offset=1, clip_sample=False)
_WORDS = "a photo of the cat dog an astronaut riding horse on mars hello world cozy reading nook red blue"


def _byte_alphabet() -> list[str]:
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_clip_tokenizer(folder: Path, words: str = _WORDS, pad_token: str = "<|endoftext|>") -> Path:
    """A tiny CLIP tokenizer folder (vocab.json, merges.txt, configs) that transformers' CLIPTokenizer reads."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet, merges = _byte_alphabet(), []
    for word in words.split():
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            if (symbols[0], symbols[1]) not in merges:
                merges.append((symbols[0], symbols[1]))
            symbols = [symbols[0] + symbols[1], *symbols[2:]]
    tokens = [*alphabet, *(a + "</w>" for a in alphabet), *(a + b for a, b in merges)]
    tokens = [*dict.fromkeys(tokens), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    def added(content):
        return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    specials = {"bos_token": added("<|startoftext|>"), "eos_token": added("<|endoftext|>"),
                "unk_token": added("<|endoftext|>")}
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**specials, "pad_token": pad_token, "model_max_length": 77, "do_lower_case": True, "errors": "replace",
         "add_prefix_space": False, "tokenizer_class": "CLIPTokenizer"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({**specials, "pad_token": pad_token}))
    return folder


def _perturb(module, torch, scale=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return module.eval()


def build_tiny_sd(folder: Path, *, in_channels: int = 4, seed: int = 0) -> Path:
    """Save a tiny random ``StableDiffusionPipeline`` (or an inpainting one with ``in_channels=9``)."""
    import diffusers
    import torch
    import transformers

    tok_dir = write_clip_tokenizer(folder.parent / f"{folder.name}_tok")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    unet = diffusers.UNet2DConditionModel(**TINY_UNET, in_channels=in_channels)
    vae = diffusers.AutoencoderKL(**TINY_VAE)
    for i, module in enumerate((text_encoder, unet, vae)):
        _perturb(module, torch, seed=seed + i)
    cls = diffusers.StableDiffusionInpaintPipeline if in_channels == 9 else diffusers.StableDiffusionPipeline
    pipe = cls(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
               scheduler=diffusers.PNDMScheduler.from_config(TINY_SCHEDULER), safety_checker=None, feature_extractor=None,
               requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


TINY_SDXL_UNET = dict(sample_size=TINY_SIZE // 2, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                      cross_attention_dim=32 + 48, attention_head_dim=[2, 4], use_linear_projection=True,
                      transformer_layers_per_block=[1, 2], addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=16 + 6 * 8,  # pooled text (16) + 6 time ids x 8
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
TINY_SDXL_SCHEDULER = dict(TINY_SCHEDULER, timestep_spacing="leading", interpolation_type="linear",
                           use_karras_sigmas=False, prediction_type="epsilon")


def build_tiny_sdxl(folder: Path, *, seed: int = 20) -> Path:
    """Save a tiny random ``StableDiffusionXLPipeline``: a CLIPTextModel (hidden 32) and a
    CLIPTextModelWithProjection (hidden 48, projection 16; its tokenizer pads with "!" as SDXL's does), a
    text_time UNet, a VAE and an Euler scheduler; ``force_zeros_for_empty_prompt`` on."""
    import diffusers
    import torch
    import transformers

    tokenizer = transformers.CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder.parent / f"{folder.name}_tok"))
    tokenizer_2 = transformers.CLIPTokenizer.from_pretrained(
        write_clip_tokenizer(folder.parent / f"{folder.name}_tok2", pad_token="!"))
    torch.manual_seed(seed)

    def clip_config(tok, hidden, **kw):
        return transformers.CLIPTextConfig(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, **kw)

    text_encoder = transformers.CLIPTextModel(clip_config(tokenizer, 32))
    text_encoder_2 = transformers.CLIPTextModelWithProjection(clip_config(tokenizer_2, 48, projection_dim=16))
    unet = diffusers.UNet2DConditionModel(**TINY_SDXL_UNET)
    vae = diffusers.AutoencoderKL(**(TINY_VAE | {"scaling_factor": 0.13025}))
    for i, module in enumerate((text_encoder, text_encoder_2, unet, vae)):
        _perturb(module, torch, seed=seed + i)
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=diffusers.EulerDiscreteScheduler.from_config(TINY_SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def clip_tokenizer_writer():
    """:func:`write_clip_tokenizer` for test modules (they cannot import this conftest)."""
    return write_clip_tokenizer


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny random SD pipeline folder in diffusers' format."""
    pytest.importorskip("diffusers")
    return build_tiny_sd(tmp_path_factory.mktemp("pipelines") / "tiny_sd")


@pytest.fixture(scope="session")
def tiny_sd_inpaint(tmp_path_factory) -> Path:
    """A tiny random SD inpainting pipeline folder (9-channel UNet) in diffusers' format."""
    pytest.importorskip("diffusers")
    return build_tiny_sd(tmp_path_factory.mktemp("pipelines") / "tiny_sd_inpaint", in_channels=9, seed=10)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """A tiny random SDXL pipeline folder (two text encoders, text_time UNet) in diffusers' format."""
    pytest.importorskip("diffusers")
    return build_tiny_sdxl(tmp_path_factory.mktemp("pipelines") / "tiny_sdxl")


@pytest.fixture(scope="session")
def tiny_latents() -> np.ndarray:
    """Seed-independent NCHW starting latents for parity runs (batch 2: two prompts)."""
    return np.random.default_rng(123).standard_normal((2, 4, TINY_SIZE // 2, TINY_SIZE // 2)).astype(np.float32)


TINY_IMAGE_ENCODER = dict(hidden_size=32, intermediate_size=37, projection_dim=24, num_hidden_layers=2,
                          num_attention_heads=4, image_size=32, patch_size=8)
# Plus resampler: diffusers rebuilds it with depth 4, 64-wide heads and an MLP ratio of 4
TINY_PLUS = dict(hidden_dims=48, heads=1, num_queries=6, depth=4)


def build_tiny_ip_adapters(folder: Path, unet_folder: Path, *, seed: int = 30) -> Path:
    """Random IP-Adapter files in the original / diffusers format for the UNet in ``unet_folder``, written key by key
    (``ip-adapter_tiny.safetensors``: plain, 4 tokens; ``ip-adapter-plus_tiny.safetensors``: Plus resampler) plus
    a random transformers ``CLIPVisionModelWithProjection`` in ``image_encoder/``. The ``ip_adapter.<i>`` indices
    follow diffusers' attn_processors order (read from diffusers' own UNet)."""
    import diffusers
    import torch
    import transformers
    from safetensors.numpy import save_file

    torch.manual_seed(seed)
    encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY_IMAGE_ENCODER))
    _perturb(encoder, torch, seed=seed)
    encoder.save_pretrained(folder / "image_encoder")
    unet = diffusers.UNet2DConditionModel.from_pretrained(unet_folder)
    cross = unet.config.cross_attention_dim
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.2):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    def ln(n):
        return {"weight": 1.0 + w(n, scale=0.1), "bias": w(n, scale=0.1)}

    ip, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            inner = unet.get_submodule(name[:-len(".processor")]).to_k.out_features
            ip[f"ip_adapter.{key_id}.to_k_ip.weight"] = w(inner, cross)
            ip[f"ip_adapter.{key_id}.to_v_ip.weight"] = w(inner, cross)
            key_id += 2
    plain = {"image_proj.proj.weight": w(4 * cross, TINY_IMAGE_ENCODER["projection_dim"]),
             "image_proj.proj.bias": w(4 * cross), **{f"image_proj.norm.{k}": v for k, v in ln(cross).items()}}
    save_file({**plain, **ip}, folder / "ip-adapter_tiny.safetensors")
    h, e, inner = TINY_PLUS["hidden_dims"], TINY_IMAGE_ENCODER["hidden_size"], 64 * TINY_PLUS["heads"]
    plus = {"image_proj.latents": w(1, TINY_PLUS["num_queries"], h, scale=h ** -0.5),
            "image_proj.proj_in.weight": w(h, e), "image_proj.proj_in.bias": w(h),
            "image_proj.proj_out.weight": w(cross, h), "image_proj.proj_out.bias": w(cross),
            **{f"image_proj.norm_out.{k}": v for k, v in ln(cross).items()}}
    for layer in range(TINY_PLUS["depth"]):
        pre = f"image_proj.layers.{layer}"
        for norm in ("0.norm1", "0.norm2", "1.0"):
            plus.update({f"{pre}.{norm}.{k}": v for k, v in ln(h).items()})
        plus.update({f"{pre}.0.to_q.weight": w(inner, h), f"{pre}.0.to_kv.weight": w(2 * inner, h),
                     f"{pre}.0.to_out.weight": w(h, inner), f"{pre}.1.1.weight": w(4 * h, h),
                     f"{pre}.1.3.weight": w(h, 4 * h)})
    save_file({**plus, **ip}, folder / "ip-adapter-plus_tiny.safetensors")
    return folder


@pytest.fixture(scope="session")
def tiny_ip_adapters(tmp_path_factory, tiny_sd) -> Path:
    """A folder with random IP-Adapter weights (plain and Plus) for ``tiny_sd`` and their ``image_encoder/``."""
    return build_tiny_ip_adapters(tmp_path_factory.mktemp("ip_adapters"), tiny_sd / "unet")
