"""The inpainting UNet starts equal to the text-to-image UNet it is built from."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import fakes

from canvas_jax.models.unet import UNet2DConditionModel
from canvas_jax.train.inpaint_task import inpaint_unet_from


def test_inpaint_unet_at_init_equals_base():
    cfg = {**fakes.TINY_UNET, "cross_attention_dim": 16}
    base = UNet2DConditionModel(cfg, rngs=nnx.Rngs(0))
    inpaint = inpaint_unet_from(base, rngs=nnx.Rngs(1))
    assert inpaint.config["in_channels"] == 9 and base.config["in_channels"] == 4
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (2, 8, 8, 4))
    extra = jax.random.normal(k[1], (2, 8, 8, 5))  # any mask / masked-image latents
    ctx = jax.random.normal(k[2], (2, 5, 16))
    t = jnp.array([10, 700])
    want = base(x, t, ctx)
    got = inpaint(jnp.concatenate([x, extra], -1), t, ctx)
    assert float(jnp.max(jnp.abs(want))) > 1e-3
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    # the new input channels are exactly zero; everything else is a copy
    k_in = inpaint.conv_in.kernel[...]
    assert np.all(np.asarray(k_in[:, :, 4:]) == 0)
    np.testing.assert_array_equal(np.asarray(k_in[:, :, :4]), np.asarray(base.conv_in.kernel[...]))
