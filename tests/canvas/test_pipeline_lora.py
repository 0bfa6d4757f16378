"""LoRA weights loaded into the Pipeline: scale 0 is the base model, merged equals unmerged."""

import jax.numpy as jnp
import numpy as np

from canvas_jax import Pipeline
from canvas_jax.convert.lora import save_lora
from canvas_jax.models.lora import apply_lora, lora_layers


def test_pipeline_lora_scale_merge(tiny_sd, tiny_latents, tmp_path):
    # a LoRA file with non-zero factors for the tiny UNet
    donor = Pipeline.from_pretrained(tiny_sd)
    apply_lora(donor.unet, rank=2, alpha=4.0)
    rng = np.random.default_rng(0)
    for layer in lora_layers(donor.unet).values():
        layer.lora_B[...] = jnp.asarray(0.2 * rng.standard_normal(layer.lora_B.shape), jnp.float32)
    lora_file = save_lora(donor.unet, tmp_path / "lora")

    pipe = Pipeline.from_pretrained(tiny_sd)
    kw = dict(num_steps=4, guidance_scale=3.0, sampler="ddim", latents=tiny_latents[:1], output_type="np")
    base = pipe("a red circle", **kw).images
    assert pipe.load_lora_weights(lora_file, scale=0.0)
    np.testing.assert_allclose(pipe("a red circle", **kw).images, base, atol=1e-5)
    pipe.set_lora_scale(1.0)
    with_lora = pipe("a red circle", **kw).images
    assert np.abs(with_lora - base).max() > 1e-3
    pipe.merge_lora()
    np.testing.assert_allclose(pipe("a red circle", **kw).images, with_lora, atol=1e-4)
    pipe.merge_lora(False)
    np.testing.assert_allclose(pipe("a red circle", **kw).images, with_lora, atol=1e-4)
