"""IP-Adapter modules on a tiny UNet: scale 0 is the base model exactly, per-block scales, the trainable set."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from canvas_jax.models.ip_adapter import (
    ImageProjection,
    IPAdapterPlusImageProjection,
    attach_ip_adapter,
    cross_attention_layers,
    ip_adapter_scales,
    remove_ip_adapter,
    set_ip_adapter_scale,
)
from canvas_jax.models.lora import freeze
from canvas_jax.models.unet import UNet2DConditionModel

UNET = dict(sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=24,
            attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


@pytest.fixture(scope="module")
def unet_inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    text = rng.standard_normal((2, 5, 24)).astype(np.float32)
    return x, np.array([10.0, 500.0], np.float32), text


def _perturb(module, seed=1):
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        var[...] = var[...] + jnp.asarray(0.1 * rng.standard_normal(var.shape), var[...].dtype)


@nnx.jit
def _run(unet, x, t, text, embeds):
    tokens = None if embeds is None else unet.ip_adapter(embeds)
    return unet(x, t, text, ip_tokens=tokens)


@pytest.mark.parametrize("plus", [False, True])
def test_scale_zero_is_the_base_model_exactly(unet_inputs, plus):
    x, t, text = unet_inputs
    unet = UNet2DConditionModel(UNET, rngs=nnx.Rngs(0))
    base = np.asarray(_run(unet, x, t, text, None))
    if plus:
        proj = IPAdapterPlusImageProjection(embed_dims=20, output_dims=24, hidden_dims=16, depth=2, dim_head=8,
                                            heads=2, num_queries=3, rngs=nnx.Rngs(1))
        embeds = np.random.default_rng(2).standard_normal((2, 2, 7, 20)).astype(np.float32)  # 2 images, 7 tokens
    else:
        proj = ImageProjection(12, 24, num_tokens=4, rngs=nnx.Rngs(1))
        embeds = np.random.default_rng(2).standard_normal((2, 1, 12)).astype(np.float32)
    names = attach_ip_adapter(unet, proj, rngs=nnx.Rngs(3), scale=0.0)
    assert names == [n for n, _ in cross_attention_layers(unet)] and len(names) == 4  # down, 2 x up, mid
    assert unet.ip_adapter(jnp.asarray(embeds)).shape == (2, (6 if plus else 4), 24)
    _perturb(unet.ip_adapter)
    np.testing.assert_array_equal(np.asarray(_run(unet, x, t, text, embeds)), base)
    set_ip_adapter_scale(unet, 0.8)
    with_image = np.asarray(_run(unet, x, t, text, embeds))
    assert np.abs(with_image - base).max() > 1e-3
    changed = embeds.copy()
    changed[1] = -changed[1]  # another image for row 1 only
    other = np.asarray(_run(unet, x, t, text, changed))
    assert np.abs(other[0] - with_image[0]).max() < 1e-5 and np.abs(other[1] - with_image[1]).max() > 1e-4
    remove_ip_adapter(unet)
    np.testing.assert_array_equal(np.asarray(_run(unet, x, t, text, None)), base)


def test_trainable_set_and_block_scales():
    unet = UNet2DConditionModel(UNET, rngs=nnx.Rngs(0))
    n_base = len(nnx.to_flat_state(nnx.state(unet, nnx.Param)))
    attach_ip_adapter(unet, ImageProjection(12, 24, rngs=nnx.Rngs(1)), rngs=nnx.Rngs(2))
    adapter = nnx.to_flat_state(nnx.state(unet, nnx.All(nnx.Param, nnx.PathContains("ip_adapter"))))
    names = {".".join(map(str, p)) for p, _ in adapter}
    assert len(nnx.to_flat_state(nnx.state(unet, nnx.Param))) == n_base + len(adapter)
    assert names == {"ip_adapter.image_proj.image_embeds.kernel", "ip_adapter.image_proj.image_embeds.bias",
                     "ip_adapter.image_proj.norm.scale", "ip_adapter.image_proj.norm.bias",
                     *(f"{n}.ip_adapter.{k}.kernel" for n, _ in cross_attention_layers(unet)
                       for k in ("to_k_ip", "to_v_ip"))}
    # adapter training: freeze every other parameter and the adapter is exactly what the optimizer sees
    freeze(unet, nnx.Not(nnx.PathContains("ip_adapter")))
    assert {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(unet, nnx.Param))} == names
    # diffusers' per-block dict: unnamed parts get 0, lists give each transformer of a block its own scale
    scales = set_ip_adapter_scale(unet, {"up": {"block_1": [0.25, 1.0]}})
    assert scales == {"down_blocks.0.attentions.0.transformer_blocks.0.attn2": 0.0,
                      "up_blocks.1.attentions.0.transformer_blocks.0.attn2": 0.25,
                      "up_blocks.1.attentions.1.transformer_blocks.0.attn2": 1.0,
                      "mid_block.attentions.0.transformer_blocks.0.attn2": 0.0}
    assert ip_adapter_scales(unet) == scales
    assert list(set_ip_adapter_scale(unet, {"down": 0.5, "up": 2.0, "mid": [3.0]}).values()) == [0.5, 2.0, 2.0, 3.0]
    for bad, match in (({"left": 1.0}, "unknown keys"), ({"up": {"block_0": 1.0}}, "no cross-attention block"),
                       ({"up": {"block_1": [1.0, 1.0, 1.0]}}, "expected 2 scales for up.block_1")):
        with pytest.raises(ValueError, match=match):
            set_ip_adapter_scale(unet, bad)
    remove_ip_adapter(unet)
    with pytest.raises(ValueError, match="no IP-Adapter is attached"):
        set_ip_adapter_scale(unet, 1.0)
    with pytest.raises(ValueError, match="ip_tokens given but no IP-Adapter"):
        unet(jnp.zeros((1, 8, 8, 4)), 1.0, jnp.zeros((1, 5, 24)), ip_tokens=jnp.zeros((1, 4, 24)))
    jax.clear_caches()
