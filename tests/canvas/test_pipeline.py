"""canvas_jax.Pipeline end to end against diffusers' StableDiffusionPipeline (tiny random weights, CPU)."""

import warnings

import numpy as np
import pytest

import canvas_jax

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
warnings.filterwarnings("ignore", module="diffusers")

PROMPTS = ["a photo of a cat", "an astronaut riding a horse on mars"]
SCHEDULERS = {"ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler"}


@pytest.fixture(scope="module")
def pipes(tiny_sd):
    ref = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd)
    ref.set_progress_bar_config(disable=True)
    return canvas_jax.Pipeline.from_pretrained(tiny_sd), ref


@pytest.mark.parametrize("sampler", list(SCHEDULERS))
def test_images_match_diffusers(pipes, tiny_latents, sampler):
    ours, ref = pipes
    ref.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(ref.scheduler.config)
    with torch.no_grad():
        expected = ref(PROMPTS, latents=torch.from_numpy(tiny_latents), num_inference_steps=10, guidance_scale=5.0,
                       output_type="np", height=32, width=32).images
    got = ours(PROMPTS, latents=tiny_latents, num_steps=10, guidance_scale=5.0, sampler=sampler,
               output_type="np").images
    assert got.shape == expected.shape == (2, 32, 32, 3) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-3
    assert np.abs(got[0] - got[1]).max() > 1e-2  # the prompts condition the images


def test_seed_repeats_and_negative_prompt_changes_result(pipes):
    ours, _ = pipes
    kw = dict(num_steps=10, guidance_scale=5.0, sampler="ddim", output_type="np")  # compiled by the parity test
    a = ours(PROMPTS, seed=3, **kw).images
    b = ours(PROMPTS, seed=3, **kw).images
    c = ours(PROMPTS, seed=4, **kw).images
    d = ours(PROMPTS, seed=3, negative_prompt="red blue", **kw).images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    assert np.abs(a - d).max() > 1e-4


def test_pil_output_and_images_per_prompt(pipes):
    ours, _ = pipes
    out = ours("a photo of a dog", num_steps=10, guidance_scale=5.0, sampler="ddim", num_images_per_prompt=2)
    assert len(out.images) == 2 and out.images[0].size == (32, 32) and out.images[0].mode == "RGB"
    assert np.abs(np.asarray(out.images[0], float) - np.asarray(out.images[1], float)).max() > 0


def test_img2img_starts_from_the_image(pipes):
    ours, _ = pipes
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    image = np.stack([yy, xx, 0.5 * (yy + xx)], -1).astype(np.float32)
    kw = dict(num_steps=10, guidance_scale=5.0, sampler="dpmpp_2m", output_type="latent", seed=1)
    low = ours.img2img(image, "a photo of a cat", strength=0.2, **kw).images
    high = ours.img2img(image, "a photo of a cat", strength=0.9, **kw).images
    import jax
    from flax import nnx

    target = nnx.jit(lambda vae, x: vae.encode(x).mode() * vae.scaling_factor)(ours.vae, image[None] * 2 - 1)
    target = np.asarray(jax.device_get(target)).transpose(0, 3, 1, 2)
    assert low.shape == target.shape == (1, 4, 16, 16)
    assert np.abs(low - target).mean() < np.abs(high - target).mean()


@pytest.mark.parametrize("kwargs, match", [
    (dict(height=30), "multiples of 4"),
    (dict(width=0), "multiples of 4"),
    (dict(latents=np.zeros((1, 4, 8, 8), np.float32)), "expected NCHW shape"),
    (dict(output_type="jpg"), "output_type"),
    (dict(sampler="plms"), "sampler"),
    (dict(negative_prompt=["a", "b", "c"]), "negative_prompt"),
])
def test_bad_arguments_are_explained(pipes, kwargs, match):
    ours, _ = pipes
    with pytest.raises(ValueError, match=match):
        ours("a cat", num_steps=2, **kwargs)


def test_bad_prompt_and_folder(pipes, tmp_path):
    ours, _ = pipes
    with pytest.raises(TypeError, match="prompt"):
        ours(None)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        canvas_jax.Pipeline.from_pretrained(tmp_path)


def test_return_log_probs_keeps_the_images_and_gives_the_trajectory(pipes):
    """The log-prob run is the same sampling (same images); its trajectory ends at the returned latents."""
    ours, _ = pipes
    kw = dict(num_steps=4, guidance_scale=5.0, sampler="ddpm", seed=1)
    plain_out = ours(PROMPTS, output_type="latent", **kw)
    plain = plain_out.images
    assert plain_out.log_probs is None and plain_out.trajectory is None
    out = ours(PROMPTS, output_type="latent", return_log_probs=True, **kw)
    np.testing.assert_allclose(out.images, plain, atol=1e-5)
    assert out.log_probs.shape == (2, 4) and out.trajectory.shape == (2, 5, *plain.shape[1:])
    np.testing.assert_allclose(out.trajectory[:, -1], plain, atol=1e-5)
    noisy = canvas_jax.diffusion.make_plan(ours.schedule, "ddpm", 4).steps["c_noise"] > 0
    assert np.all(np.isfinite(out.log_probs)) and np.all((out.log_probs != 0) == noisy)  # 0 where no noise is added
    with pytest.raises(ValueError, match="no transition density"):
        ours(PROMPTS, num_steps=4, sampler="dpmpp_2m", return_log_probs=True)
