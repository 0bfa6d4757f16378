"""Whole-pipeline conversion: diffusers -> canvas_jax -> diffusers keeps every tensor; our format samples alike."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

import canvas_jax
from canvas_jax.convert.pipeline import from_diffusers, to_diffusers
from core_jax.state_dict import StateDictMismatch
from canvas_jax.components import INDEX_NAME

diffusers = pytest.importorskip("diffusers")

WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
           "text_encoder": "model.safetensors"}


def _tensors(folder, name):
    state = load_file(folder / name / WEIGHTS[name])
    if name == "text_encoder":  # transformers 5 saves CLIPTextModel without the "text_model." prefix
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    return state


@pytest.fixture(scope="module")
def converted(tiny_sd, tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    ours = from_diffusers(tiny_sd, root / "ours")
    back = to_diffusers(ours, root / "back")
    return ours, back


def test_our_format_layout(converted):
    ours, _ = converted
    index = json.loads((ours / INDEX_NAME).read_text())
    assert index["format"] == "canvas_jax"
    assert index["components"] == {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL",
                                   "text_encoder": "CLIPTextModel"}
    for name in index["components"]:
        assert (ours / name / "config.json").is_file() and (ours / name / "params").is_dir()
    assert (ours / "tokenizer").is_dir() and (ours / "scheduler" / "scheduler_config.json").is_file()


def test_round_trip_gives_identical_tensors(tiny_sd, converted):
    _, back = converted
    for name in WEIGHTS:
        before, after = _tensors(tiny_sd, name), _tensors(back, name)
        assert sorted(before) == sorted(after), name
        for key in before:
            np.testing.assert_array_equal(after[key], before[key], err_msg=f"{name}: {key}")


def test_diffusers_loads_the_converted_pipeline(tiny_sd, converted, tiny_latents):
    torch = pytest.importorskip("torch")
    _, back = converted
    kw = dict(num_inference_steps=2, guidance_scale=5.0, output_type="np", latents=torch.from_numpy(tiny_latents[:1]))
    pipes = [diffusers.StableDiffusionPipeline.from_pretrained(p) for p in (tiny_sd, back)]
    with torch.no_grad():
        a, b = (p("a photo of a cat", **kw).images for p in pipes)
    np.testing.assert_array_equal(a, b)


def test_our_format_samples_like_the_original(tiny_sd, converted, tiny_latents):
    ours, _ = converted
    kw = dict(latents=tiny_latents, num_steps=10, guidance_scale=5.0, sampler="ddim", output_type="np")
    prompts = ["a photo of a cat", "an astronaut riding a horse on mars"]
    a = canvas_jax.Pipeline.from_pretrained(tiny_sd)(prompts, **kw).images
    b = canvas_jax.Pipeline.from_pretrained(ours)(prompts, **kw).images
    np.testing.assert_array_equal(a, b)


def test_mismatch_lists_the_keys(tiny_sd, tmp_path):
    import shutil

    from safetensors.numpy import save_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny_sd, bad)
    state = load_file(bad / "unet" / WEIGHTS["unet"])
    state.pop("conv_in.bias")
    state["extra.weight"] = np.zeros(2, np.float32)
    save_file(state, bad / "unet" / WEIGHTS["unet"])
    with pytest.raises(StateDictMismatch, match=r"missing keys \(1\): conv_in.bias.*unexpected keys \(1\): extra.weight"):
        from_diffusers(bad, tmp_path / "out")


def test_refuses_to_overwrite_and_bad_sources(converted, tmp_path):
    ours, back = converted
    with pytest.raises(FileExistsError, match="not empty"):
        to_diffusers(ours, back)
    with pytest.raises(ValueError, match="already in canvas_jax format"):
        from_diffusers(ours, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_diffusers(tmp_path / "missing", tmp_path / "y")
