"""Image prompts (IP-Adapter) in the Pipeline against diffusers' StableDiffusionPipeline + load_ip_adapter (tiny random
SD pipeline, random plain and Plus adapters), in every mode, with LoRA, and from the command line."""

import warnings

import numpy as np
import pytest
from PIL import Image

import canvas_jax
from canvas_jax.cli import main
from canvas_jax.convert.lora import save_lora
from canvas_jax.errors import InputError
from canvas_jax.images import clip_image_inputs
from canvas_jax.models.lora import apply_lora, lora_layers

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
warnings.filterwarnings("ignore", module="diffusers")

PROMPTS = ["a photo of a cat", "an astronaut riding a horse on mars"]
SCHEDULERS = {"ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler"}
FILES = {"plain": "ip-adapter_tiny.safetensors", "plus": "ip-adapter-plus_tiny.safetensors"}
# per sampler: a plain scale, or diffusers' per-block dict (the tiny UNet's cross-attention blocks: down 0, up 1, mid)
SCALES = {"ddim": 0.7, "dpmpp_2m": 1.0, "euler": {"down": 0.5, "up": {"block_1": [0.0, 1.2]}}}
STEPS = 3
# the plain-ddim parity call's settings: the tests below reuse its compiled program where they can
KW = dict(num_steps=STEPS, guidance_scale=5.0, sampler="ddim", output_type="np")


def _image(seed, size=(48, 40)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def pipes(tiny_sd, tiny_ip_adapters):
    out = {}
    for kind, name in FILES.items():
        ref = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd)
        ref.set_progress_bar_config(disable=True)
        ref.load_ip_adapter(str(tiny_ip_adapters), subfolder="", weight_name=name, image_encoder_folder="image_encoder")
        ours = canvas_jax.Pipeline.from_pretrained(tiny_sd)
        ours.load_ip_adapter(tiny_ip_adapters, weight_name=name, image_encoder_folder="image_encoder")
        out[kind] = ours, ref
    return out


@pytest.mark.parametrize("sampler", list(SCHEDULERS))
@pytest.mark.parametrize("kind", list(FILES))
def test_images_match_diffusers(pipes, tiny_latents, kind, sampler):
    ours, ref = pipes[kind]
    scale = SCALES[sampler]
    ref.set_ip_adapter_scale(scale)
    ours.set_ip_adapter_scale(scale)
    ref.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(ref.scheduler.config)
    images = [_image(1), _image(2, (30, 50))] if sampler == "euler" else [_image(1)]  # several images: one adapter
    with torch.no_grad():
        expected = ref(PROMPTS, ip_adapter_image=[images], latents=torch.from_numpy(tiny_latents),
                       num_inference_steps=STEPS, guidance_scale=5.0, output_type="np", height=32, width=32).images
    got = ours(PROMPTS, ip_adapter_image=images, latents=tiny_latents, num_steps=STEPS, guidance_scale=5.0,
               sampler=sampler, output_type="np").images
    diff = np.abs(got - expected).max()
    print(f"ip_adapter {kind} {sampler}: max abs diff {diff:.2e}")
    assert got.shape == expected.shape == (2, 32, 32, 3) and diff < 1e-3
    ours.set_ip_adapter_scale(0.0)  # the image matters
    assert np.abs(ours(PROMPTS, ip_adapter_image=images, latents=tiny_latents, num_steps=STEPS, guidance_scale=5.0,
                       sampler=sampler, output_type="np").images - got).max() > 1e-2


def test_preprocessing_matches_clip_image_processor():
    images = [_image(3, (40, 48)), _image(4, (48, 40)), _image(5, (33, 90)), _image(6, (240, 300))]
    for size in (32, 224):
        proc = transformers.CLIPImageProcessor(size=size, crop_size=size)
        for image in images:
            expected = proc(image, return_tensors="np").pixel_values.transpose(0, 2, 3, 1)
            np.testing.assert_allclose(clip_image_inputs(image, size), expected, atol=1e-6)
            np.testing.assert_allclose(clip_image_inputs(np.asarray(image), size), expected, atol=1e-6)
    assert clip_image_inputs(np.stack([np.asarray(images[0])] * 3), 32).shape == (3, 32, 32, 3)


def test_every_mode_embeds_and_errors(pipes):
    ours, _ = pipes["plain"]
    ours.set_ip_adapter_scale(1.0)
    kw = dict(KW, seed=0)
    a, b = _image(7), _image(8)
    base = np.full((32, 32, 3), 128, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    calls = {"txt2img": lambda **k: ours(PROMPTS, **k, **kw),
             "img2img": lambda **k: ours.img2img(base, PROMPTS, strength=0.8, **k, **kw),
             "inpaint": lambda **k: ours.inpaint(base, mask, PROMPTS, **k, **kw),
             "outpaint": lambda **k: ours.outpaint(base[:, :16], PROMPTS, right=16, **k, **kw)}
    for mode, call in calls.items():
        with_a = call(ip_adapter_image=a).images
        assert np.abs(call(ip_adapter_image=b).images - with_a).max() > 1e-2, mode
    # precomputed embeddings give the same images as the image itself
    embeds, negative = ours.encode_image(np.asarray(a))
    assert embeds.shape == (1, 24) and not negative.any()
    np.testing.assert_allclose(calls["txt2img"](ip_adapter_image_embeds=embeds).images,
                               calls["txt2img"](ip_adapter_image=a).images, atol=1e-6)
    with pytest.raises(InputError, match="an IP-Adapter is loaded: pass ip_adapter_image"):
        ours(PROMPTS[0], **kw)
    with pytest.raises(InputError, match=r"expected \[images, features\] with 24 features"):
        ours(PROMPTS[0], ip_adapter_image_embeds=np.zeros((1, 7)), **kw)
    with pytest.raises(InputError, match="not both"):
        ours(PROMPTS[0], ip_adapter_image=a, ip_adapter_image_embeds=embeds, **kw)
    plus, _ = pipes["plus"]
    hidden, zero_image = plus.encode_image(a)
    assert hidden.shape == (1, 17, 32) and np.abs(zero_image).max() > 0  # penultimate states of a zero image
    with pytest.raises(InputError, match="also pass negative_ip_adapter_image_embeds"):
        plus(PROMPTS[0], ip_adapter_image_embeds=hidden, **kw)


def test_with_lora(tiny_sd, tiny_ip_adapters, tmp_path):
    donor = canvas_jax.Pipeline.from_pretrained(tiny_sd)
    apply_lora(donor.unet, rank=2, alpha=4.0)
    rng = np.random.default_rng(0)
    for layer in lora_layers(donor.unet).values():
        layer.lora_B[...] = 0.2 * rng.standard_normal(layer.lora_B.shape).astype(np.float32)
    lora_file = save_lora(donor.unet, tmp_path / "lora")
    kw = KW

    lora_only = canvas_jax.Pipeline.from_pretrained(tiny_sd)
    lora_only.load_lora_weights(lora_file)
    with pytest.raises(InputError, match="no IP-Adapter is loaded"):
        lora_only(PROMPTS, ip_adapter_image=_image(1), **kw)
    expected_lora = lora_only(PROMPTS, **kw).images

    pipe = canvas_jax.Pipeline.from_pretrained(tiny_sd)
    pipe.load_ip_adapter(tiny_ip_adapters, weight_name=FILES["plain"])
    ip_only = pipe(PROMPTS, ip_adapter_image=_image(1), **kw).images
    pipe.load_lora_weights(lora_file, scale=0.0)
    np.testing.assert_allclose(pipe(PROMPTS, ip_adapter_image=_image(1), **kw).images, ip_only, atol=1e-5)
    pipe.set_lora_scale(1.0)
    both = pipe(PROMPTS, ip_adapter_image=_image(1), **kw).images
    assert np.abs(both - ip_only).max() > 1e-2 and np.abs(both - expected_lora).max() > 1e-2
    pipe.set_ip_adapter_scale(0.0)
    np.testing.assert_allclose(pipe(PROMPTS, ip_adapter_image=_image(1), **kw).images, expected_lora, atol=1e-5)


def test_cli_sample_with_image_prompt(tiny_sd, tiny_ip_adapters, tmp_path, capsys):
    ref, out = tmp_path / "ref.png", tmp_path / "out.png"
    _image(1).save(ref)
    argv = ["sample", "--model", str(tiny_sd), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--steps", str(STEPS),
            "--guidance", "5", "--sampler", "ddim", "--out", str(out)]
    ip = ["--ip-adapter", str(tiny_ip_adapters), "--ip-weight-name", FILES["plain"], "--ip-image", str(ref)]
    assert main([*argv, *ip, "--ip-scale", "0.7"]) == 0 and out.is_file()
    first = np.asarray(Image.open(out))
    assert main([*argv, *ip, "--ip-scale", "0"]) == 0
    assert np.abs(np.asarray(Image.open(out), float) - first).max() > 0
    capsys.readouterr()
    assert main([*argv, "--ip-image", str(ref)]) == 2
    assert "--ip-image and --ip-adapter go together" in capsys.readouterr().err
    assert main([*argv, *ip[:2], "--ip-weight-name", "missing.safetensors", "--ip-image", str(ref)]) == 2
    assert "no IP-Adapter weights" in capsys.readouterr().err


def test_an_image_encoder_that_does_not_fit(tiny_sd, tiny_ip_adapters, tmp_path):
    from flax import nnx

    from canvas_jax.convert.clip_vision import save_clip_vision
    from canvas_jax.models.clip_vision import CLIPVisionModelWithProjection

    config = transformers.CLIPVisionConfig.from_pretrained(tiny_ip_adapters / "image_encoder").to_dict()
    save_clip_vision(CLIPVisionModelWithProjection({**config, "projection_dim": 8}, rngs=nnx.Rngs(0)), tmp_path / "enc")
    pipe = canvas_jax.Pipeline.from_pretrained(tiny_sd)
    with pytest.raises(InputError, match="gives 8-d image_embeds, but the IP-Adapter .* expects 24-d ones"):
        pipe.load_ip_adapter(tiny_ip_adapters, weight_name=FILES["plain"], image_encoder_folder=tmp_path / "enc")
    with pytest.raises(InputError, match="no CLIP image encoder"):
        pipe.load_ip_adapter(tiny_ip_adapters, weight_name=FILES["plain"], image_encoder_folder="elsewhere")
    assert pipe.unet.ip_adapter is None and pipe.image_encoder is None  # unchanged
