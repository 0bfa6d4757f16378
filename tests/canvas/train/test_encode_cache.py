"""Cached text embeddings and VAE latents equal what the frozen encoders compute inside the step."""

import fakes
import jax
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

from canvas_jax import text_conditioning
from canvas_jax.train.encode_cache import latent_cache
from canvas_jax.train.t2i_task import vae_latents
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
        direct = np.asarray(text_conditioning.encode(plain.text_encoder, bp["input_ids"], bp["attention_mask"]))
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


def test_cached_latents_and_loss_equal_uncached(tmp_path, tiny_vae_dir):
    data_fn = fakes.data_fn(n=8)
    cached = make_task(tiny_config(tmp_path / "a", vae_path=tiny_vae_dir, **{"vae.cache_latents": True}),
                       data_fn=data_fn)
    plain = make_task(tiny_config(tmp_path / "b", vae_path=tiny_vae_dir), data_fn=data_fn)
    ctx = DataContext(seed=0, batch_size=4, process_index=0, process_count=1)
    it_c, it_p = cached.train_data(ctx), plain.train_data(ctx)
    distinct = set()
    for _ in range(4):  # 16 examples of 8: the second epoch is all hits
        bc, bp = next(it_c), next(it_p)
        assert "latent_moments" not in bp
        np.testing.assert_array_equal(bc["image"], bp["image"])
        distinct.update(np.asarray(im, np.float32).tobytes() for im in bp["image"])
    assert cached.latent_cache.misses == len(distinct)  # each distinct image encoded once
    assert cached.latent_cache.hits == 16 - len(distinct)
    m_c, m_p = cached.create_model(nnx.Rngs(0)), plain.create_model(nnx.Rngs(0))
    rng = jax.random.key(3)
    for r in (rng, None):  # a posterior sample and the mode
        np.testing.assert_allclose(vae_latents(m_c.vae, bc["image"], r, bc["latent_moments"]),
                                   vae_latents(m_p.vae, bp["image"], r), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(float(cached.loss(m_c, bc, rng)[0]), float(plain.loss(m_p, bp, rng)[0]), rtol=1e-5)


def test_cache_keeps_at_most_max_entries(tiny_vae_dir):
    from canvas_jax.runs import load_vae

    cache = latent_cache(load_vae(tiny_vae_dir), max_entries=2)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    first = cache.lookup(images)
    assert len(cache) == 2 and cache.misses == 3
    again = cache.lookup(images[2:])  # still kept: a hit, and the same bits
    assert cache.hits == 1
    np.testing.assert_array_equal(again, first[2:])
    np.testing.assert_array_equal(cache.lookup(images[:1]), first[:1])  # evicted: encoded again, the same bits
    assert cache.misses == 4
    with pytest.raises(ValueError, match="cache size must be >= 1"):
        latent_cache(load_vae(tiny_vae_dir), max_entries=0)


@pytest.mark.parametrize("chunk", [1, 4])
def test_a_rows_encoding_does_not_depend_on_its_batch(tiny_vae_dir, chunk):
    """New rows are encoded a chunk at a time: the same bits whichever rows share the chunk, wherever the row
    sits in it, and duplicates in one lookup are encoded once."""
    from canvas_jax.runs import load_vae

    images = np.random.default_rng(1).uniform(-1, 1, (7, 16, 16, 3)).astype(np.float32)
    vae = load_vae(tiny_vae_dir)
    a = latent_cache(vae, chunk=chunk)
    together = a.lookup(np.concatenate([images, images[:2]]))  # 7 new rows (two chunks when chunk=4), 2 repeats
    assert (a.misses, a.hits) == (7, 2)
    np.testing.assert_array_equal(together[7:], together[:2])
    b = latent_cache(vae, chunk=chunk)
    one_by_one = np.concatenate([b.lookup(images[i:i + 1]) for i in (6, 0, 3, 1, 5, 2, 4)])
    np.testing.assert_array_equal(one_by_one, together[[6, 0, 3, 1, 5, 2, 4]])
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        latent_cache(vae, chunk=0)
