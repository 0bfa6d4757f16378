"""canvas_jax.Pipeline on SDXL against diffusers' StableDiffusionXLPipeline end to end (tiny random weights, CPU):
two text encoders (penultimate states concatenated), the second one's pooled projection, ``time_ids``, and the
zeroed negative conditioning of ``force_zeros_for_empty_prompt``."""

import warnings

import numpy as np
import pytest

import canvas_jax

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
warnings.filterwarnings("ignore", module="diffusers")

PROMPTS = ["a photo of a cat", "an astronaut riding a horse on mars"]
SCHEDULERS = {"euler": "EulerDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}


@pytest.fixture(scope="module")
def pipes(tiny_sdxl):
    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    ref.set_progress_bar_config(disable=True)
    return canvas_jax.Pipeline.from_pretrained(tiny_sdxl), ref


@pytest.mark.parametrize("sampler, negative_prompt, width", [("euler", None, 32), ("dpmpp_2m", None, 32),
                                                              ("euler", "red blue", 48)],
                         ids=["euler-zero-negative", "dpmpp_2m-zero-negative", "euler-negative-prompt-32x48"])
def test_sdxl_images_match_diffusers(pipes, tiny_latents, sampler, negative_prompt, width):
    ours, ref = pipes
    assert ours.sdxl and ours.force_zeros_for_empty_prompt
    latents = tiny_latents  # 32 x 32 images; 32 x 48 checks the (height, width) order of time_ids
    if width != 32:
        latents = np.random.default_rng(5).standard_normal((2, 4, 16, width // 2)).astype(np.float32)
    ref.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(ref.scheduler.config)
    kw = dict(negative_prompt=negative_prompt, guidance_scale=5.0, output_type="np", height=32, width=width)
    with torch.no_grad():
        expected = ref(PROMPTS, latents=torch.from_numpy(latents), num_inference_steps=3, **kw).images
    got = ours(PROMPTS, latents=latents, num_steps=3, sampler=sampler, **kw).images
    assert got.shape == expected.shape == (2, 32, width, 3) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-3
    assert np.abs(got[0] - got[1]).max() > 1e-2  # the prompts condition the images
