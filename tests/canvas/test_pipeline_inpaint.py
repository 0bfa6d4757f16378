"""Inpainting (mask blending and a 9-channel inpainting UNet) and outpainting keep what they should keep."""

import jax
import numpy as np
import pytest
from flax import nnx

import canvas_jax

pytest.importorskip("diffusers")

KW = dict(num_steps=10, guidance_scale=5.0, sampler="dpmpp_2m", seed=0)


def _image(h=32, w=32):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy / (h - 1), xx / (w - 1), 0.5 * (yy / (h - 1) + xx / (w - 1))], -1).astype(np.float32)


def _right_half_mask():
    mask = np.zeros((32, 32), np.float32)
    mask[:, 16:] = 1.0
    return mask


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    return canvas_jax.Pipeline.from_pretrained(tiny_sd)


def test_mask_blend_keeps_unmasked_latents(pipe):
    """With a plain UNet the final latents equal the image's own latents wherever the mask is black."""
    image = _image()
    latents = pipe.inpaint(image, _right_half_mask(), "a red cat", output_type="latent", **KW).images
    target = nnx.jit(lambda vae, x: vae.encode(x).mode() * vae.scaling_factor)(pipe.vae, image[None] * 2 - 1)
    target = np.asarray(jax.device_get(target)).transpose(0, 3, 1, 2)  # NCHW, latent mask = columns 8..15
    assert latents.shape == target.shape == (1, 4, 16, 16)
    np.testing.assert_allclose(latents[..., :8], target[..., :8], atol=1e-5)
    assert np.abs(latents[..., 8:] - target[..., 8:]).max() > 0.1  # the masked half was repainted


def test_mask_blend_keeps_unmasked_pixels(pipe):
    image, mask = _image(), _right_half_mask()
    out = pipe.inpaint(image, mask, "a red cat", output_type="np", **KW).images[0]
    np.testing.assert_allclose(out[:, :16], image[:, :16], atol=1e-6)
    assert np.abs(out[:, 16:] - image[:, 16:]).max() > 0.05


def test_inpainting_unet_keeps_unmasked_pixels(tiny_sd_inpaint):
    pipe = canvas_jax.Pipeline.from_pretrained(tiny_sd_inpaint)
    assert pipe.inpainting_unet
    image, mask = _image(), _right_half_mask()
    pil_mask = (mask * 255).astype(np.uint8)  # uint8 masks (as read from a PNG) work too
    out = pipe.inpaint(image, pil_mask, "a red cat", output_type="np", **KW).images[0]
    np.testing.assert_allclose(out[:, :16], image[:, :16], atol=1e-6)
    assert np.abs(out[:, 16:] - image[:, 16:]).max() > 0.05


def test_outpaint_extends_and_keeps_original(pipe):
    image = _image(32, 16)
    out = pipe.outpaint(image, "a red cat", left=8, right=8, output_type="np", **KW).images
    assert out.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(out[0, :, 8:24], image, atol=1e-6)
    border = np.concatenate([out[0, :, :8], out[0, :, 24:]], axis=1)
    edge = np.concatenate([np.repeat(image[:, :1], 8, 1), np.repeat(image[:, -1:], 8, 1)], axis=1)
    assert np.abs(border - edge).max() > 0.05  # the border was painted, not left as replicated edges


@pytest.mark.parametrize("call, match", [
    (lambda p: p.outpaint(_image(), "x", right=6), "multiples of 4"),
    (lambda p: p.outpaint(_image(), "x", right=0), "all margins are 0"),
    (lambda p: p.outpaint(_image(), "x", right=-4), "non-negative"),
    (lambda p: p.inpaint(_image(), np.zeros((2, 2, 2, 2)), "x"), "mask"),
    (lambda p: p.inpaint(_image(30, 30), np.zeros((30, 30)), "x"), "multiples of 4"),
    (lambda p: p.img2img(_image() * 3, "x"), r"\[0, 1\]"),
])
def test_bad_inputs_are_explained(pipe, call, match):
    with pytest.raises(ValueError, match=match):
        call(pipe)
