"""Cached text embeddings equal the ones the frozen encoder computes inside the step."""

import jax
import numpy as np
from flax import nnx

import fakes
from conftest import tiny_config

from canvas_jax.train import text_encoders
from canvas_jax.train.tasks import make_task
from core_jax.task import DataContext


def test_cached_embeddings_and_loss_equal_uncached(tmp_path, tiny_vae_dir):
    data_fn = fakes.data_fn(n=16)
    cached = make_task(tiny_config(tmp_path / "a", vae_path=tiny_vae_dir), data_fn=data_fn)
    plain = make_task(tiny_config(tmp_path / "b", vae_path=tiny_vae_dir, **{"text_encoder.cache": False}),
                      data_fn=data_fn)
    ctx = DataContext(seed=0, batch_size=4, process_index=0, process_count=1)
    it_c, it_p = cached.train_data(ctx), plain.train_data(ctx)
    seen = set()
    for _ in range(6):  # 24 examples of 16: some captions repeat
        bc, bp = next(it_c), next(it_p)
        assert "text_emb" in bc and "input_ids" not in bc
        seen.update(r.tobytes() for r in bp["input_ids"])
        direct = np.asarray(text_encoders.encode(plain.text_encoder, bp["input_ids"], bp["attention_mask"]))
        np.testing.assert_allclose(bc["text_emb"], direct, atol=2e-5, rtol=1e-5)
    assert cached.cache.misses == len(seen)  # each distinct caption encoded once
    assert cached.cache.hits > 0

    m_c, m_p = cached.create_model(nnx.Rngs(0)), plain.create_model(nnx.Rngs(0))
    assert m_c.text_encoder is None and m_p.text_encoder is not None
    assert set(nnx.state(m_p, nnx.Param).keys()) == {"unet"}  # the frozen encoder is not trained
    rng = jax.random.key(5)
    loss_c, _ = cached.loss(m_c, bc, rng)
    loss_p, _ = plain.loss(m_p, bp, rng)
    np.testing.assert_allclose(float(loss_c), float(loss_p), rtol=1e-5)
