import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    rescale_noise_cfg as torch_rescale,
)

from canvas_jax.diffusion import cfg, cfg_from_batch, rescale_noise_cfg

_rs = np.random.RandomState(0)
UNCOND = _rs.randn(3, 8, 8, 4).astype(np.float32)
COND = (1.5 * _rs.randn(3, 8, 8, 4) + 0.2).astype(np.float32)


def test_cfg_is_the_guidance_formula():
    out = cfg(jnp.asarray(UNCOND), jnp.asarray(COND), 7.5)
    np.testing.assert_allclose(out, UNCOND + 7.5 * (COND - UNCOND), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cfg(jnp.asarray(UNCOND), jnp.asarray(COND), 1.0), COND, atol=1e-6)


@pytest.mark.parametrize("rescale", [0.3, 0.7, 1.0])
def test_guidance_rescale_matches_diffusers(rescale):
    scale = 5.0
    guided_t = torch.from_numpy(UNCOND) + scale * (torch.from_numpy(COND) - torch.from_numpy(UNCOND))
    ref = torch_rescale(guided_t, torch.from_numpy(COND), guidance_rescale=rescale).numpy()
    np.testing.assert_allclose(cfg(jnp.asarray(UNCOND), jnp.asarray(COND), scale, rescale), ref, atol=1e-5)
    traced = jax.jit(cfg)(jnp.asarray(UNCOND), jnp.asarray(COND), scale, jnp.float32(rescale))
    np.testing.assert_allclose(traced, ref, atol=1e-5)


def test_full_rescale_gives_the_conditional_std_per_sample():
    guided = jnp.asarray(UNCOND + 9.0 * (COND - UNCOND))
    out = rescale_noise_cfg(guided, jnp.asarray(COND), 1.0)
    np.testing.assert_allclose(
        jnp.std(out, axis=(1, 2, 3), ddof=1), np.std(COND, axis=(1, 2, 3), ddof=1), rtol=1e-5
    )


def test_per_sample_scales_and_batched_halves():
    scales = jnp.array([1.0, 3.0, 7.5])
    out = cfg(jnp.asarray(UNCOND), jnp.asarray(COND), scales)
    for i, s in enumerate([1.0, 3.0, 7.5]):
        np.testing.assert_allclose(out[i], UNCOND[i] + s * (COND[i] - UNCOND[i]), rtol=1e-6, atol=1e-6)
    uncond, cond = jnp.asarray(UNCOND), jnp.asarray(COND)
    batched = jnp.concatenate([uncond, cond])
    np.testing.assert_array_equal(cfg_from_batch(batched, 4.0, 0.5), cfg(uncond, cond, 4.0, 0.5))


def test_bf16_outputs_keep_their_dtype():
    out = cfg(jnp.asarray(UNCOND, jnp.bfloat16), jnp.asarray(COND, jnp.bfloat16), 7.5, 0.7)
    assert out.dtype == jnp.bfloat16


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        cfg(jnp.zeros((2, 4)), jnp.zeros((2, 5)), 7.5)
    with pytest.raises(ValueError, match=r"per-sample guidance value must have shape \(3,\)"):
        cfg(jnp.asarray(UNCOND), jnp.asarray(COND), jnp.ones(2))
    with pytest.raises(ValueError, match="batch must be even"):
        cfg_from_batch(jnp.zeros((3, 4)), 7.5)
