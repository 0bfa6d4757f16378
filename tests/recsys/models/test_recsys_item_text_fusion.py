"""Items represented by id, text or both: every mode, one representation in and out, a frozen text table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recsys_jax  # noqa: F401
from recsys_jax.models import TEXT_MODES, ItemTextConfig, build_model
from recsys_jax.models.embeddings import ItemEmbedding, ItemTextTable

N, T, D = 12, 6, 8
HSTU = {"embed_dim": D, "num_layers": 1, "num_heads": 1, "attention_dim": 8, "linear_dim": 8, "max_seq_len": 5}


def _text(seed=0):
    table = np.random.default_rng(seed).normal(size=(N + 1, T)).astype(np.float32)
    table[3] = table[7]  # two items with the same text
    return table


def _param_shapes(model):
    return {"/".join(map(str, k)): v.shape for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_id_mode_is_the_model_of_before():
    """mode id (the default) adds nothing: the same parameters and values as a model built without item text."""
    plain = build_model("hstu", HSTU, N, nnx.Rngs(0))
    with_id = build_model("hstu", HSTU, N, nnx.Rngs(0), item_text=ItemTextConfig(), text_table=_text())
    assert _param_shapes(plain) == _param_shapes(with_id)
    assert not any(isinstance(v, ItemTextTable) for _, v in nnx.iter_graph(with_id))
    for a, b in zip(jax.tree.leaves(nnx.state(plain, nnx.Param)), jax.tree.leaves(nnx.state(with_id, nnx.Param))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", [m for m in TEXT_MODES if m != "id"])
def test_fused_modes(mode):
    cfg = ItemTextConfig(mode=mode, dim=T)
    emb = ItemEmbedding(N, D, rngs=nnx.Rngs(0), text=cfg, text_table=_text())
    table = np.asarray(emb.table(normalize=False))
    ids = jnp.array([[0, 1, 3, 7, N]])
    tokens = np.asarray(emb(ids))
    assert table.shape == (N + 1, D) and np.all(table[0] == 0) and np.all(tokens[0, 0] == 0)
    np.testing.assert_allclose(tokens[0, 1:], table[[1, 3, 7, N]], rtol=1e-5, atol=1e-6)  # inputs = output table
    many = np.asarray(emb(jnp.tile(ids, (3, 1))))  # more ids than items: gathered from the fused table
    np.testing.assert_allclose(many, np.tile(tokens, (3, 1, 1)), rtol=1e-5, atol=1e-6)
    params = _param_shapes(emb)
    assert ("embedding" in params) == (mode != "text_only")
    assert not any(k.startswith("text") for k in params)  # the text table is frozen: not an nnx.Param
    assert nnx.state(emb, ItemTextTable)["text"][...].shape == (128, T)  # padded rows like the id table
    if mode == "text_only":
        np.testing.assert_array_equal(table[3], table[7])  # placed by its text alone
    # the text changes the representation in every fused mode
    other = ItemEmbedding(N, D, rngs=nnx.Rngs(0), text=cfg, text_table=_text(1))
    assert not np.allclose(np.asarray(other.table(normalize=False))[1:], table[1:])
    # gradients reach the projection, never the text table
    grads = nnx.grad(lambda m: jnp.sum(m.table(normalize=True) ** 3))(emb)
    assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads))


def test_models_use_the_fused_table_for_inputs_and_retrieval():
    for name, cfg in (("hstu", HSTU), ("sasrec", {"embed_dim": D, "num_layers": 1, "num_heads": 1, "ffn_dim": 8,
                                                   "max_seq_len": 5}),
                      ("two_tower", {"embed_dim": D, "hidden_dims": [8], "max_seq_len": 5})):
        model = build_model(name, cfg, N, nnx.Rngs(0), item_text=ItemTextConfig(mode="text_only", dim=T),
                            text_table=_text())
        table = np.asarray(model.item_embeddings())
        np.testing.assert_allclose(table[3], table[7], atol=1e-6)
        out = model(jnp.array([[0, 1, 2, 3, 4]]), jnp.zeros((1, 5), jnp.int32), deterministic=True)
        assert out.shape == (1, 5, D)


def test_bad_item_text_input():
    with pytest.raises(ValueError, match="item_text.mode 'mean'"):
        ItemTextConfig(mode="mean")
    with pytest.raises(ValueError, match=r"expected \[13, 6\]"):
        ItemEmbedding(N, D, rngs=nnx.Rngs(0), text=ItemTextConfig(mode="sum", dim=T), text_table=np.zeros((N, T)))
    with pytest.raises(ValueError, match="needs the item text table"):
        ItemEmbedding(N, D, rngs=nnx.Rngs(0), text=ItemTextConfig(mode="sum", dim=T))


def test_id_dropout_leaves_whole_id_rows_out_in_training_only():
    cfg = ItemTextConfig(mode="sum", dim=T, id_dropout=0.5)
    emb = ItemEmbedding(N, D, rngs=nnx.Rngs(0), text=cfg, text_table=_text())
    np.testing.assert_array_equal(emb.embedding[...], 0.0)  # with text, ids start at zero: untrained = text alone
    emb.embedding[...] = jax.random.normal(jax.random.key(1), emb.embedding.shape)  # as if trained
    full = np.asarray(emb.table(normalize=False))
    text_only = np.asarray(emb.project(emb.text[...][: N + 1]))
    np.testing.assert_array_equal(np.asarray(emb.table(normalize=False, deterministic=True)), full)
    train = np.asarray(emb.table(normalize=False, deterministic=False))[1:]
    dropped = np.all(np.isclose(train, text_only[1:], atol=1e-6), axis=1)
    kept = np.all(np.isclose(train, full[1:], atol=1e-6), axis=1)
    assert np.all(dropped ^ kept) and 0 < dropped.sum() < N  # each row: all of its id, or none of it
    with pytest.raises(ValueError, match="id_dropout applies"):
        ItemTextConfig(mode="text_only", id_dropout=0.2)


@pytest.mark.parametrize("mode", ["sum", "gated", "concat_mlp"])
def test_text_only_table_is_how_a_cold_item_is_placed(mode):
    """table(text_only=True): every row as an untrained (zero-id) item would be, whatever the ids learned."""
    cfg = ItemTextConfig(mode=mode, dim=T, id_dropout=0.3, text_loss_weight=1.0)
    emb = ItemEmbedding(N, D, rngs=nnx.Rngs(0), text=cfg, text_table=_text())
    cold_view = np.asarray(emb.table(normalize=True))  # ids at zero: the text alone
    emb.embedding[...] = jax.random.normal(jax.random.key(1), emb.embedding.shape)  # as if trained
    for deterministic in (True, False):  # id_dropout has nothing left to drop
        np.testing.assert_allclose(np.asarray(emb.table(normalize=True, deterministic=deterministic, text_only=True)),
                                   cold_view, rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(emb.table(normalize=True)), cold_view)
    plain = ItemEmbedding(N, D, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="text-only item table needs item text"):
        plain.table(normalize=True, text_only=True)
    for bad, match in (({"mode": "text_only", "text_loss_weight": 1.0}, "text_loss_weight applies"),
                       ({"mode": "sum", "text_loss_weight": -1.0}, "text_loss_weight must be >= 0")):
        with pytest.raises(ValueError, match=match):
            ItemTextConfig(**bad)


def test_text_profile_late_fusion_at_inference_only():
    """profile_weight w: at inference each score gains w x cos(unit sum of the last profile_len items' unit texts,
    the item's unit text), against numpy; training outputs and tables are the model without it."""
    w, n = 0.75, 2
    base_cfg = ItemTextConfig(mode="sum", dim=T)
    base = build_model("hstu", HSTU, N, nnx.Rngs(0), item_text=base_cfg, text_table=_text())
    fused = build_model("hstu", HSTU, N, nnx.Rngs(0), item_text=ItemTextConfig(mode="sum", dim=T, profile_weight=w,
                                                                            profile_len=n), text_table=_text())
    ids = jnp.array([[0, 0, 2, 5, 9], [4, 1, 3, 8, 6]])
    ts = jnp.tile(jnp.arange(5, dtype=jnp.int32) * 1000, (2, 1))
    users, table = fused(ids, ts, deterministic=True), fused.item_embeddings()
    plain_users, plain_table = base(ids, ts, deterministic=True), base.item_embeddings()
    unit = _text() / np.linalg.norm(_text(), axis=1, keepdims=True)
    unit[0] = 0
    for b, row in enumerate(np.asarray(ids)):
        profile = unit[row[-n:]].sum(0)
        profile /= np.linalg.norm(profile)
        want = np.asarray(plain_table) @ np.asarray(plain_users[b, -1]) + w * unit @ profile
        np.testing.assert_allclose(np.asarray(table @ users[b, -1]), want, rtol=1e-5, atol=1e-5)
    # training (deterministic=False) sees the model without the profile
    np.testing.assert_allclose(np.asarray(fused(ids, ts, deterministic=False)), np.asarray(base(ids, ts, deterministic=False)),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(fused.item_embeddings(False)), np.asarray(base.item_embeddings(False)))
    with pytest.raises(ValueError, match="profile_weight needs item text"):
        ItemTextConfig(profile_weight=0.5)
    with pytest.raises(ValueError, match="profile_len"):
        ItemTextConfig(mode="sum", profile_weight=0.5, profile_len=0)
