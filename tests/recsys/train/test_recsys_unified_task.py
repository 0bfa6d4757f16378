"""Unified multi-label training on the marketplace simulator: config, a few steps, restore, no leakage."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

from core_jax.config import ConfigError
from core_jax.task import DataContext
from recsys_jax.data.event_examples import event_train_example
from recsys_jax.train.config import load_config
from recsys_jax.train.task import make_task
from recsys_jax.train.unified import UnifiedTask


def test_unified_tiny_trains_every_label_and_restores(unified_run):
    cfg, state, metrics, root = unified_run
    assert int(jax.device_get(state["step"])) == 3 and np.isfinite(metrics["loss"])
    for name in ("engagement", "ad_click", "conversion"):
        assert np.isfinite(metrics[f"loss_{name}"])
    assert metrics["targets_engagement"] > metrics["targets_ad_click"] > 0
    assert os.path.isfile(os.path.join(cfg.train.run_dir, "dataset", "events.json"))  # vocabularies for serving
    from recsys_jax.train.restore import restore_run

    run = restore_run(cfg.train.run_dir, which="latest")
    assert isinstance(run.task, UnifiedTask) and run.step == 3
    model = run.trainer.model(run.state)
    assert model.cfg.num_actions == 6 and model.cfg.num_scenario_labels == 3
    assert model.events.action.shape == (6, 16) and model.scenario_tower.label.shape == (3, 16)
    # one trained model, every scenario: the user embedding and the top ads change with the scenario
    ds, tables = run.task.dataset, run.task.labels
    recs = [event_train_example(ds.sequence(u), max_len=12, labels=tables) for u in range(8)]
    batch = {k: jnp.asarray(np.stack([r[k] for r in recs])) for k in ("item_ids", "timestamps", "actions",
                                                                       "surfaces", "is_ad")}
    h = model(batch.pop("item_ids"), batch.pop("timestamps"), deterministic=True, **batch)[:, -1]
    ads = np.flatnonzero(tables.pool[tables.code("conversion")])
    table = np.asarray(model.item_embeddings())[ads]
    top = {}
    for scenario in (("conversion", 0), ("conversion", 1), ("ad_click", 0)):
        u = np.asarray(model.scenario(h, tables.code(scenario[0]), scenario[1]))
        top[scenario] = np.argsort(-(u @ table.T), axis=1)[:, :10]
    assert not np.array_equal(top[("conversion", 0)], top[("conversion", 1)])
    assert not np.array_equal(top[("conversion", 0)], top[("ad_click", 0)])


def test_scenario_embeddings_see_no_future_event(unified_run):
    cfg, _, _, _ = unified_run
    task = make_task(cfg)
    model = task.create_model(nnx.Rngs(0))
    batch = next(iter(task.train_data(DataContext(seed=0, batch_size=4, process_index=0, process_count=1))))
    batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "user"}
    emb = jax.jit(lambda m, b: task.scenario_embeddings(m, b, deterministic=True))
    base = np.asarray(emb(model, batch))
    assert base.shape == (4, 12, 3, 16)
    cut = 6
    changed = dict(batch)
    for key, size in (("item_ids", 20), ("actions", 6), ("surfaces", 3)):
        col = np.asarray(batch[key]).copy()
        col[:, cut:] = np.where(col[:, cut:] > 0, (col[:, cut:] + 1) % size + (key == "item_ids"), col[:, cut:])
        changed[key] = jnp.asarray(col)
    changed["is_ad"] = batch["is_ad"].at[:, cut:].set(~batch["is_ad"][:, cut:])
    changed["timestamps"] = batch["timestamps"].at[:, cut:].add(999)
    out = np.asarray(emb(model, changed))
    np.testing.assert_allclose(out[:, :cut], base[:, :cut], atol=1e-6)
    # the target surface is the scenario's (what is asked), and changes the embedding
    other = dict(batch, target_surfaces=(batch["target_surfaces"] + 1) % 3)
    assert np.abs(np.asarray(emb(model, other)) - base)[np.asarray(batch["mask"])].max() > 1e-3


def test_unified_config_errors_name_the_key(tmp_path, unified_tiny):
    CONFIG, TINY = unified_tiny.config, unified_tiny.overrides
    with pytest.raises(ConfigError, match="'model.name'"):
        load_config(CONFIG, ["model.name=sasrec"])
    with pytest.raises(ConfigError, match="'train.best_metric'"):
        load_config(CONFIG, ["train.best_metric=ndcg@10"])
    with pytest.raises(ConfigError, match="unified.loss"):
        load_config(CONFIG, ["unified.loss.sampler=zipf"])
    with pytest.raises(ConfigError, match="'data.build.input'"):
        load_config(CONFIG, ["data.build.input=x.csv"])
    with pytest.raises(ConfigError, match="'unified.target_window'"):
        load_config(CONFIG, ["unified.target_window=-3d"])
    with pytest.raises(ConfigError, match="'model.item_text.profile_weight'.*single-label"):
        load_config(CONFIG, ["model.item_text.mode=sum", "model.item_text.profile_weight=0.5"])
    bad = yaml.safe_load(open(CONFIG))
    bad["unified"]["labels"][0]["actions"] = ["like"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    cfg = load_config(str(path), TINY + [f"data.cache_dir={tmp_path / 'cache'}", f"train.run_dir={tmp_path / 'r'}"])
    with pytest.raises(ConfigError, match="'unified.labels'.*like"):
        make_task(cfg).labels
    cfg = load_config(CONFIG, TINY + ["model.hstu.num_actions=4", f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(ConfigError, match="'model.hstu.num_actions'"):
        make_task(cfg).labels


def test_label_weights_zero_a_label_cleanly(unified_run, unified_tiny, tmp_path):
    """unified.label_weights.engagement=0 (the ads-only baseline): weight 0 in the task, no gradient from it."""
    cfg = load_config(unified_tiny.config, unified_tiny.overrides + [
        "unified.label_weights.engagement=0", f"data.cache_dir={unified_run[3] / 'cache'}"])
    tables = make_task(cfg).labels
    assert tables.weights.tolist() == [0.0, 1.0, 2.0]
    from recsys_jax.train.multilabel import MultiLabelLossConfig, multi_label_loss

    rng = np.random.default_rng(0)
    user = jnp.asarray(rng.normal(size=(2, 5, 3, 8)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(21, 8)), jnp.float32)
    targets = jnp.asarray(rng.integers(1, 21, (2, 5)))
    mask = jnp.ones((2, 5, 3), bool)
    log_q = jnp.zeros((3, 21)).at[:, 0].set(-1e9)
    loss_cfg = MultiLabelLossConfig(num_negatives=0)
    grad = jax.grad(lambda u: multi_label_loss(u, targets, mask, table, None, log_q, tables.weights, loss_cfg,
                                               temperature=0.1)[0])(user)
    assert float(jnp.abs(grad[..., 0, :]).max()) == 0.0 and float(jnp.abs(grad[..., 1:, :]).max()) > 0
    with pytest.raises(ConfigError, match="'unified.label_weights.clicks'"):
        load_config(unified_tiny.config, ["unified.label_weights.clicks=0"])
    with pytest.raises(ConfigError, match="at least one label"):
        load_config(unified_tiny.config, [f"unified.label_weights.{n}=0" for n in ("engagement", "ad_click",
                                                                                    "conversion")])


def test_two_tower_baseline_trains_with_the_multi_label_loss(unified_run, unified_tiny):
    """model.name=two_tower unified.scenario_tower=false: one user embedding for every label (a baseline)."""
    cfg = load_config(unified_tiny.config, unified_tiny.overrides + [
        "model.name=two_tower", "unified.scenario_tower=false", "model.two_tower.max_seq_len=12",
        "model.two_tower.embed_dim=16", f"data.cache_dir={unified_run[3] / 'cache'}",
        f"train.run_dir={unified_run[3] / 'two_tower'}"])
    task = make_task(cfg)
    model = task.create_model(nnx.Rngs(0))
    assert type(model).__name__ == "TwoTower"
    batch = next(iter(task.train_data(DataContext(seed=0, batch_size=4, process_index=0, process_count=1))))
    batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "user"}
    loss, metrics = task.loss(model, batch, jax.random.key(0))
    assert np.isfinite(float(loss)) and set(metrics) >= {"loss_engagement", "loss_conversion"}
    with pytest.raises(ConfigError, match="'model.name'"):
        load_config(unified_tiny.config, ["model.name=two_tower"])  # the scenario tower needs hstu


def test_vocabulary_sizes_from_the_dataset(unified_run):
    """num_actions / num_surfaces -1 in the config: the saved run config holds the dataset's sizes."""
    cfg = unified_run[0]
    from recsys_jax.train.restore import load_run_config

    saved = load_run_config(cfg.train.run_dir)
    assert (saved.model.hstu.num_actions, saved.model.hstu.num_surfaces) == (6, 3)
    assert dataclasses.asdict(saved.unified.split)["protocol"] == "time"


def test_item_text_features_enter_the_unified_model(unified_run, unified_tiny):
    """model.item_text in a unified run: the text table is part of the item representation (training and the
    restored run), id_dropout and the text-only loss act, and a different text moves the items."""
    root = unified_run[3]
    task0 = make_task(unified_run[0])
    table = np.random.default_rng(0).normal(size=(task0.num_items + 1, 8)).astype(np.float32)
    np.save(root / "text.npy", table)
    cfg = load_config(unified_tiny.config, unified_tiny.overrides + [
        "model.item_text.mode=sum", "model.item_text.dim=8", f"model.item_text.path={root / 'text.npy'}",
        "model.item_text.id_dropout=0.3", "model.item_text.text_loss_weight=0.5",
        f"data.cache_dir={root / 'cache'}", f"train.run_dir={root / 'text_run'}"])
    from recsys_jax.train.task import train

    _, metrics = train(cfg)
    assert np.isfinite(metrics["text_only_loss"]) and metrics["text_only_loss"] > 0  # the text-only loss trained
    from recsys_jax.train.restore import restore_run

    run = restore_run(cfg.train.run_dir, which="latest")
    model = run.trainer.model(run.state)
    np.testing.assert_array_equal(np.asarray(model.items.text[...])[1 : table.shape[0]], table[1:])  # restored
    items = np.asarray(model.item_embeddings())
    model.items.text[...] = model.items.text[...][::-1]  # other texts: other items
    assert np.abs(np.asarray(model.item_embeddings()) - items)[1:].max() > 1e-3
    # id_dropout: two training-mode tables differ, the inference table is deterministic
    nnx.reseed(model, default=0)
    a, b = (np.asarray(model.item_embeddings(deterministic=False)) for _ in range(2))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(model.item_embeddings()), np.asarray(model.item_embeddings()))


@pytest.mark.parametrize("name", ["unified_tiny", "unified_sim", "unified_ml1m", "unified_completejourney"])
def test_unified_configs_load(name, unified_tiny):
    cfg = load_config(os.path.join(os.path.dirname(unified_tiny.config), f"{name}.yaml"))
    assert cfg.unified.enabled and cfg.train.best_metric is None


def test_event_dataset_from_a_config_with_rating_behaviours(movielens_files, tmp_path, unified_tiny):
    """data.build.events + rating_behaviours (unified_ml1m.yaml): an event dataset with like / view actions."""
    from recsys_jax.data.loader import load_dataset
    from recsys_jax.train.dataset_cache import resolve_dataset

    path = os.path.join(os.path.dirname(unified_tiny.config), "unified_ml1m.yaml")
    cfg = load_config(path, [f"data.build.input={movielens_files / 'ratings.dat'}", f"data.cache_dir={tmp_path}"])
    ds = load_dataset(resolve_dataset(cfg.data, verbose=False))
    assert sorted(ds.events["actions"]) == ["like", "view"] and "actions" in ds.events["fields"]
    assert make_task(cfg, ds).labels.names == ("like", "view")
    plain = load_config(path, [f"data.build.input={movielens_files / 'ratings.dat'}", f"data.cache_dir={tmp_path}",
                               "data.build.events=false", "unified.enabled=false",
                               "data.build.rating_behaviours=false"])
    assert load_dataset(resolve_dataset(plain.data, verbose=False)).events is None  # sequence datasets unchanged
