"""IP-Adapter files: ours load diffusers-format files, export them back unchanged, diffusers loads our exports with
the same UNet output, and a file that does not fit gives one error listing every offending key."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from canvas_jax.convert.diffusers_models import load_unet, save_unet
from canvas_jax.convert.ip_adapter import ip_adapter_state_dict, load_ip_adapter, save_ip_adapter
from core_jax.state_dict import StateDictMismatch
from canvas_jax.models.ip_adapter import ImageProjection, IPAdapterPlusImageProjection, attach_ip_adapter

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
warnings.filterwarnings("ignore", module="diffusers")

FILES = {"plain": "ip-adapter_tiny.safetensors", "plus": "ip-adapter-plus_tiny.safetensors"}


@pytest.mark.parametrize("kind", list(FILES))
def test_load_then_export_gives_the_file_back(tiny_sd, tiny_ip_adapters, kind):
    unet = load_unet(tiny_sd)
    assert load_ip_adapter(unet, tiny_ip_adapters / FILES[kind]) == (kind == "plus")
    original = load_file(tiny_ip_adapters / FILES[kind])
    exported = ip_adapter_state_dict(unet)
    assert exported.keys() == original.keys()
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def _random_adapter(unet, plus: bool):
    if plus:  # the shape diffusers rebuilds: depth 4, 64-wide heads, MLP ratio 4
        proj = IPAdapterPlusImageProjection(embed_dims=20, output_dims=32, hidden_dims=40, depth=4, dim_head=64,
                                            heads=1, num_queries=5, rngs=nnx.Rngs(1))
    else:
        proj = ImageProjection(20, 32, num_tokens=4, rngs=nnx.Rngs(1))
    attach_ip_adapter(unet, proj, rngs=nnx.Rngs(2), scale=1.0)
    rng = np.random.default_rng(3)
    for path, var in nnx.to_flat_state(nnx.state(unet, nnx.All(nnx.Param, nnx.PathContains("ip_adapter")))):
        noise = 0.1 * rng.standard_normal(var.shape)
        var[...] = var[...] + jnp.asarray(noise if path[-1] != "kernel" or var.ndim != 2 else noise * 2, jnp.float32)


@pytest.mark.parametrize("plus", [False, True])
def test_diffusers_loads_our_export(tiny_sd, tmp_path, plus):
    unet = load_unet(tiny_sd)
    _random_adapter(unet, plus)
    save_ip_adapter(unet, tmp_path, weight_name="ours.safetensors")
    ref = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd)
    ref.load_ip_adapter(str(tmp_path), subfolder="", weight_name="ours.safetensors", image_encoder_folder=None)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    text = rng.standard_normal((2, 7, 32)).astype(np.float32)
    embeds = rng.standard_normal((2, 2, 9, 20) if plus else (2, 2, 20)).astype(np.float32)  # two images per row
    with torch.no_grad():
        expected = ref.unet(torch.from_numpy(x), 300, encoder_hidden_states=torch.from_numpy(text),
                            added_cond_kwargs={"image_embeds": [torch.from_numpy(embeds)]}).sample.numpy()
    got = nnx.jit(lambda u, x, e: u(x, 300.0, text, ip_tokens=u.ip_adapter(e)))(unet, x.transpose(0, 2, 3, 1), embeds)
    got = np.asarray(got).transpose(0, 3, 1, 2)
    print(f"ip_adapter export {'plus' if plus else 'plain'}: UNet max abs diff {np.abs(got - expected).max():.1e}")
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # the base UNet saved to diffusers' format leaves the adapter out
    save_unet(unet, tmp_path / "unet")
    assert not any("ip_adapter" in k for k in load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))


def test_a_file_that_does_not_fit_is_one_error(tiny_sd, tiny_ip_adapters, tmp_path):
    tensors = load_file(tiny_ip_adapters / FILES["plus"])
    del tensors["ip_adapter.3.to_v_ip.weight"]
    tensors["ip_adapter.2.to_k_ip.weight"] = tensors["ip_adapter.1.to_k_ip.weight"]  # an attn1 slot
    tensors["image_proj.layers.1.0.to_kv.weight"] = tensors["image_proj.layers.1.0.to_kv.weight"][:-1]
    tensors["ip_adapter.7.to_k_ip.weight"] = tensors["ip_adapter.7.to_k_ip.weight"].T.copy()  # mid: 64 x 32
    save_file(tensors, tmp_path / "bad.safetensors")
    unet = load_unet(tiny_sd)
    with pytest.raises(StateDictMismatch) as err:
        load_ip_adapter(unet, tmp_path / "bad.safetensors")
    message = str(err.value)
    for key in ("ip_adapter.3.to_v_ip.weight", "ip_adapter.2.to_k_ip.weight", "image_proj.layers.1.0.to_kv.weight",
                "ip_adapter.7.to_k_ip.weight"):
        assert key in message
    assert err.value.missing == ["ip_adapter.3.to_v_ip.weight"]
    assert err.value.unexpected == ["ip_adapter.2.to_k_ip.weight"]
    assert [k for k, _, _ in err.value.shapes] == ["image_proj.layers.1.0.to_kv.weight", "ip_adapter.7.to_k_ip.weight"]
    assert unet.ip_adapter is None  # left unchanged
    save_file({"image_proj.foo": tensors["image_proj.latents"]}, tmp_path / "odd.safetensors")
    with pytest.raises(ValueError, match="unsupported image_proj weights"):
        load_ip_adapter(unet, tmp_path / "odd.safetensors")
