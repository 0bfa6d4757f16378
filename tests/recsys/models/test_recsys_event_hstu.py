"""HSTU over event sequences (action / surface / is-ad tokens) and the scenario tower."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recsys_jax  # noqa: F401
from recsys_jax.models import build_model
from recsys_jax.models.hstu import HSTUConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
N, L, A, S = 30, 8, 4, 3
CFG = HSTUConfig(embed_dim=16, num_layers=2, num_heads=1, attention_dim=8, linear_dim=8, max_seq_len=L,
                 dropout=0.1, num_actions=A, num_surfaces=S, use_is_ad=True, num_scenario_labels=3)


def _param_shapes(model) -> dict[str, tuple]:
    state = nnx.state(model, nnx.Param)
    return {"/".join(map(str, path)): tuple(v.shape) for path, v in nnx.to_flat_state(state)}


def _old_hstu_tree(cfg) -> dict[str, tuple]:
    """The parameter tree HSTU had before event features: items, positions and the layers only."""
    d, h = cfg.embed_dim, cfg.num_heads
    rows = -(-(1000 + 1) // 128) * 128
    tree = {"items/embedding": (rows, d), "positions/embedding": (cfg.max_seq_len, d)}
    for i in range(cfg.num_layers):
        tree[f"layers/{i}/uvqk"] = (d, 2 * h * cfg.linear_dim + 2 * h * cfg.attention_dim)
        tree[f"layers/{i}/out/kernel"] = (h * cfg.linear_dim, d)
        tree[f"layers/{i}/out/bias"] = (d,)
        if cfg.use_position_bias:
            tree[f"layers/{i}/pos_bias"] = (2 * cfg.max_seq_len - 1,)
        if cfg.use_time_bias:
            tree[f"layers/{i}/time_bias"] = (cfg.num_time_buckets + 1,)
    return tree


def test_existing_configs_build_the_same_parameter_tree():
    from recsys_jax.train.config import load_config

    paths = [p for p in sorted(glob.glob(os.path.join(ROOT, "configs", "recsys", "*.yaml")))
             if not os.path.basename(p).startswith(("unified", "longshort"))]  # longshort: its own schema
    assert len(paths) >= 5
    for path in [None] + paths:
        cfg = load_config(path)
        hstu = cfg.model.hstu
        assert not hstu.event_features and hstu.num_scenario_labels == 0, path
        model = nnx.eval_shape(lambda: build_model("hstu", hstu, 1000, nnx.Rngs(0)))
        assert _param_shapes(model) == _old_hstu_tree(hstu), path


@pytest.fixture(scope="module")
def model():
    return build_model("hstu", CFG, N, nnx.Rngs(0))


def _events(seed=0, b=3):
    rs = np.random.default_rng(seed)
    return {"item_ids": rs.integers(1, N + 1, (b, L)).astype(np.int32),
            "timestamps": (1_600_000_000 + np.cumsum(rs.integers(0, 100_000, (b, L)), axis=1)).astype(np.int32),
            "actions": rs.integers(0, A, (b, L)).astype(np.int32),
            "surfaces": rs.integers(0, S, (b, L)).astype(np.int32),
            "is_ad": rs.random((b, L)) < 0.5}


@nnx.jit
def _apply(model, ev):
    return model(ev["item_ids"], ev["timestamps"], deterministic=True, actions=ev["actions"],
                 surfaces=ev["surfaces"], is_ad=ev["is_ad"])


def _run(model, ev):
    return np.asarray(_apply(model, {k: jnp.asarray(v) for k, v in ev.items()}))


@pytest.mark.parametrize("field", ["actions", "surfaces", "is_ad", "item_ids", "timestamps"])
def test_every_event_feature_is_an_input_and_no_future_event_leaks(model, field):
    ev = _events(1)
    base = _run(model, ev)
    cut = 5
    changed = {k: v.copy() for k, v in ev.items()}
    col = changed[field]
    if field == "is_ad":
        col[:, cut:] = ~col[:, cut:]
    elif field == "timestamps":
        col[:, cut:] += 12345
    else:
        size = {"actions": A, "surfaces": S, "item_ids": N}[field]
        col[:, cut:] = (col[:, cut:] + 1 - (field == "item_ids")) % size + (field == "item_ids")
    out = _run(model, changed)
    np.testing.assert_allclose(out[:, :cut], base[:, :cut], rtol=0, atol=1e-6)  # the past never sees the future
    assert np.abs(out[:, cut] - base[:, cut]).max() > 1e-3  # the feature is an input at its own position


def test_missing_event_features_are_errors(model):
    ev = _events()
    with pytest.raises(ValueError, match="pass \\['actions'"):
        model(jnp.asarray(ev["item_ids"]), jnp.asarray(ev["timestamps"]), deterministic=True)
    with pytest.raises(ValueError, match="surfaces must have the shape"):
        model(jnp.asarray(ev["item_ids"]), jnp.asarray(ev["timestamps"]), deterministic=True,
              actions=jnp.asarray(ev["actions"]), surfaces=jnp.zeros((3, L - 1), jnp.int32),
              is_ad=jnp.asarray(ev["is_ad"]))
    plain = build_model("hstu", HSTUConfig(embed_dim=16, num_layers=1, max_seq_len=L), N, nnx.Rngs(0))
    with pytest.raises(ValueError, match="no scenario tower"):
        plain.scenario(jnp.ones((2, 16)), 0, 0)


def test_switching_the_scenario_changes_the_user_embedding_and_the_top_candidates(model):
    ev = _events(2, b=4)
    user = jnp.asarray(_run(model, ev)[:, -1])  # [B, D] after the whole history
    table = np.asarray(model.item_embeddings())

    @jax.jit
    def scen(u, label, surface):
        return model.scenario(u, label, surface)

    embs = {(lab, srf): np.asarray(scen(user, lab, srf)) for lab in range(3) for srf in range(S)}
    for e in embs.values():
        np.testing.assert_allclose(np.linalg.norm(e, axis=-1), 1.0, atol=1e-5)
    top = {k: np.argsort(-(e @ table[1:].T), axis=-1)[:, :10] for k, e in embs.items()}
    for a in embs:
        for b in embs:
            if a < b:
                assert np.abs(embs[a] - embs[b]).max() > 1e-2, (a, b)
                assert any(set(top[a][i]) != set(top[b][i]) for i in range(4)), (a, b)
    # one trunk pass serves every scenario: the tower is a function of the trunk output and the scenario only
    np.testing.assert_allclose(np.asarray(scen(user[:1], 1, 2)), embs[(1, 2)][:1], atol=1e-6)
    # padding stays zero
    assert np.all(np.asarray(model.scenario(jnp.zeros((2, 16)), 0, 0)) == 0)


def test_event_models_are_not_exported_to_generative_recommenders():
    from recsys_jax.convert.gr_gin import check_exportable

    with pytest.raises(ValueError, match="event features / scenario tower"):
        check_exportable(CFG)
