"""Shared-interface tests for the sequential encoders (HSTU, SASRec, two-tower)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recsys_jax  # noqa: F401
from recsys_jax.models import build_model, model_config

NUM_ITEMS = 30
L = 8
TINY = {
    "hstu": {"embed_dim": 16, "num_layers": 2, "num_heads": 2, "attention_dim": 8, "linear_dim": 8, "max_seq_len": L},
    "sasrec": {"embed_dim": 16, "num_layers": 2, "num_heads": 2, "ffn_dim": 24, "max_seq_len": L},
    "two_tower": {"embed_dim": 16, "hidden_dims": [24], "max_seq_len": L},
}
NAMES = sorted(TINY)


_CACHE = {}


def _model(name):
    """One model per name for the whole module (building one compiles its initialisers)."""
    if name not in _CACHE:
        _CACHE[name] = build_model(name, TINY[name], NUM_ITEMS, nnx.Rngs(0))
    return _CACHE[name]


@nnx.jit
def _apply(model, ids, ts):
    return model(ids, ts, deterministic=True)


def _run(model, ids, ts):
    return np.asarray(_apply(model, jnp.asarray(ids), jnp.asarray(ts)))


def _batch(seed=0, b=3):
    rs = np.random.default_rng(seed)
    ids = rs.integers(1, NUM_ITEMS + 1, (b, L)).astype(np.int32)
    ts = (1_600_000_000 + np.cumsum(rs.integers(0, 100_000, (b, L)), axis=1)).astype(np.int32)
    return ids, ts


@pytest.mark.parametrize("name", NAMES)
def test_shapes_normalisation_and_padding_row(name):
    model = _model(name)
    ids, ts = _batch()
    ids[0, 5:] = 0
    out = _run(model, ids, ts)
    assert out.shape == (3, L, 16)
    norms = np.linalg.norm(out, axis=-1)
    np.testing.assert_allclose(norms[ids > 0], 1.0, atol=1e-5)
    np.testing.assert_array_equal(out[0, 5:], 0.0)
    table = np.asarray(model.item_embeddings())
    assert table.shape == (NUM_ITEMS + 1, 16)
    np.testing.assert_array_equal(table[0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(table[1:], axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_no_future_leakage(name):
    model = _model(name)
    ids, ts = _batch(1)
    base = _run(model, ids, ts)
    cut = 5
    ids2, ts2 = ids.copy(), ts.copy()
    ids2[:, cut] = (ids2[:, cut] % NUM_ITEMS) + 1  # a different item at position `cut`
    ts2[:, cut:] += 12345  # and a different (later) time from `cut` on
    out = _run(model, ids2, ts2)
    np.testing.assert_allclose(out[:, :cut], base[:, :cut], rtol=0, atol=1e-6)
    assert np.abs(out[:, cut] - base[:, cut]).max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_left_and_right_padding_agree(name):
    model = _model(name)
    ids, ts = _batch(2)
    n = 5
    right_ids = np.zeros_like(ids)
    right_ts = np.zeros_like(ts)
    right_ids[:, :n], right_ts[:, :n] = ids[:, :n], ts[:, :n]
    left_ids = np.zeros_like(ids)
    left_ts = np.zeros_like(ts)
    left_ids[:, L - n :], left_ts[:, L - n :] = ids[:, :n], ts[:, :n]
    right = _run(model, right_ids, right_ts)
    left = _run(model, left_ids, left_ts)
    np.testing.assert_allclose(left[:, L - n :], right[:, :n], atol=2e-5)
    # Shorter padding (a batch padded less far) gives the same embeddings too.
    short = _run(model, ids[:, :n], ts[:, :n])
    np.testing.assert_allclose(short, right[:, :n], atol=2e-5)


@pytest.mark.parametrize("name", NAMES)
def test_dropout_only_in_training_and_jit_matches_eager(name):
    model = _model(name)
    assert model.cfg.dropout > 0
    ids, ts = map(jnp.asarray, _batch(3))
    eager = model(ids, ts, deterministic=True)
    train = model(ids, ts, deterministic=False)
    assert np.abs(np.asarray(train - eager)).max() > 1e-3
    np.testing.assert_allclose(_run(model, ids, ts), np.asarray(eager), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_item_table_is_row_sharded_logically(name):
    model = _model(name)
    assert model.items.embedding.get_metadata()["out_sharding"] == ("items", "embed")


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_clear_errors(name):
    model = _model(name)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(jnp.ones((1, L + 1), jnp.int32), jnp.zeros((1, L + 1), jnp.int32), deterministic=True)
    with pytest.raises(ValueError, match=r"\[batch, seq_len\]"):
        model(jnp.ones((L,), jnp.int32), jnp.zeros((L,), jnp.int32), deterministic=True)
    with pytest.raises(ValueError, match="timestamps"):
        model(jnp.ones((2, L), jnp.int32), jnp.zeros((2, L - 1), jnp.int32), deterministic=True)


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="did you mean 'num_heads'"):
        model_config("hstu", {"num_head": 2})
    with pytest.raises(ValueError, match="unknown model 'bert4rec'"):
        build_model("bert4rec", None, NUM_ITEMS, nnx.Rngs(0))
    with pytest.raises(TypeError, match="HSTUConfig"):
        build_model("hstu", model_config("sasrec"), NUM_ITEMS, nnx.Rngs(0))
    assert model_config("two_tower", {"hidden_dims": [4, 4]}).hidden_dims == (4, 4)
