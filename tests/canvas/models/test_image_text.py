"""The image-text model: shapes, normalised embeddings, the clipped temperature, the InfoNCE loss and config
validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from canvas_jax.models.image_text import (ImageTextConfig, ImageTextModel, contrastive_loss, l2_normalize,
                                          masked_mean, same_caption)


def test_model_embeds_to_unit_vectors_and_clips_the_temperature():
    cfg = ImageTextConfig(image_size=16, channels=(8, 16), embed_dim=12, text_dim=20, text_hidden=0)
    model = ImageTextModel(cfg, rngs=nnx.Rngs(0))
    img = model.embed_images(jnp.zeros((3, 16, 16, 3)))
    txt = model.embed_pooled(jax.random.normal(jax.random.key(0), (5, 20)))
    assert img.shape == (3, 12) and txt.shape == (5, 12)
    np.testing.assert_allclose(jnp.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    assert float(model.logit_scale()) == pytest.approx(1 / 0.07, rel=1e-5)
    model.log_scale[...] = jnp.float32(10.0)
    assert float(model.logit_scale()) == pytest.approx(100.0, rel=1e-5)


def test_masked_mean_ignores_padding():
    states = jnp.arange(12, dtype=jnp.float32).reshape(1, 4, 3)
    mask = jnp.array([[1, 1, 0, 0]])
    np.testing.assert_allclose(masked_mean(states, mask), [[1.5, 2.5, 3.5]])


def test_contrastive_loss_low_when_aligned_and_symmetric():
    x = l2_normalize(jax.random.normal(jax.random.key(1), (8, 16)))
    y = l2_normalize(jax.random.normal(jax.random.key(2), (8, 16)))
    aligned = float(contrastive_loss(x, x, jnp.float32(100.0)))
    shuffled = float(contrastive_loss(x, x[::-1], jnp.float32(100.0)))
    assert aligned < 0.01 < math.log(8) < shuffled
    # the mean of both directions: swapping the towers gives the same loss; at scale 0, log(batch)
    assert float(contrastive_loss(x, y, jnp.float32(3.0))) == pytest.approx(float(contrastive_loss(y, x, 3.0)))
    assert float(contrastive_loss(x, y, jnp.float32(0.0))) == pytest.approx(math.log(8), rel=1e-6)


def test_same_caption_marks_identical_rows():
    ids = jnp.array([[5, 6], [5, 6], [7, 8], [6, 5]])
    same = np.asarray(same_caption(ids))
    assert same[0, 1] and same[1, 0] and not same[0, 3] and same.sum() == 6


@pytest.mark.parametrize("kw, match", [
    ({"image_size": 20, "channels": (8, 16, 32)}, "does not halve 3 times"),
    ({"channels": ()}, "non-empty list"),
    ({"embed_dim": 0}, "clip.embed_dim"),
    ({"init_temperature": 0.0}, "init_temperature"),
])
def test_bad_config_says_what_was_expected(kw, match):
    with pytest.raises(ValueError, match=match):
        ImageTextConfig(**kw)
    with pytest.raises(ValueError, match="unknown keys"):
        ImageTextConfig.from_dict({"embed_dims": 4})
