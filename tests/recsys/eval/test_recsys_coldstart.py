"""Cold items: held out of every training input, target and negative; evaluated apart (vs brute-force numpy)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

from core_jax.task import DataContext
from recsys_jax.data.builder import SourceSpec, build
from recsys_jax.data.cold_items import cold_item_mask, drop_cold_items
from recsys_jax.data.loader import load_dataset
from recsys_jax.data.splits import train_example
from recsys_jax.eval.coldstart import coldstart_metrics, keep_last
from recsys_jax.eval.evaluate import user_embeddings
from recsys_jax.models import build_model
from recsys_jax.train.config import load_config
from recsys_jax.train.losses import SampledSoftmaxConfig, sampled_softmax_loss
from recsys_jax.train.task import RecsysTask

KS = (10, 50)


@pytest.fixture(scope="module")
def dataset(movielens_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("cold_ds")
    return load_dataset(build(SourceSpec("movielens", str(movielens_files / "ratings.dat")), out, max_seq_len=40,
                              progress=False, verbose=False))


def test_drop_cold_items_keeps_only_the_warm_training_prefix():
    cold = np.zeros(10, bool)
    cold[[2, 5]] = True
    ex = {"user": 0, "items": np.array([1, 2, 3, 4, 5, 6], np.int32), "timestamps": np.arange(6, dtype=np.int64)}
    out = drop_cold_items(ex, cold)
    assert out["items"].tolist() == [1, 3, 4, 5, 6] and out["timestamps"].tolist() == [0, 2, 3, 4, 5]
    t = train_example(out, max_len=4)
    assert t["item_ids"][t["mask"]].tolist() == [1, 3] and t["target_ids"][t["mask"]].tolist() == [3, 4]
    # a prefix left with one item trains nothing: the held-out last two never become training pairs
    short = train_example(drop_cold_items({"user": 0, "items": np.array([2, 1, 5, 7, 8], np.int32)}, cold),
                          max_len=4)
    assert not short["mask"].any()
    assert cold_item_mask(100, 0.1, seed=3).sum() == 10 and not cold_item_mask(100, 0.1, seed=3)[0]
    np.testing.assert_array_equal(cold_item_mask(100, 0.1, seed=3), cold_item_mask(100, 0.1, seed=3))


def test_no_cold_item_in_any_training_input_or_target(dataset, tmp_path):
    cfg = load_config(None, ["data.cold_item_fraction=0.2", "data.max_len=8", "model.hstu.max_seq_len=8",
                             f"train.run_dir={tmp_path}"])
    task = RecsysTask(cfg, dataset)
    cold = task.cold_items
    assert cold.sum() == round(0.2 * dataset.num_items) > 0
    # every training example, every window: brute force over the users
    seen = set()
    it = task.train_data(DataContext(seed=0, batch_size=50, process_index=0, process_count=1))
    for _ in range(30):
        b = next(it)
        ids = np.concatenate([b["item_ids"][b["mask"]], b["target_ids"][b["mask"]]])
        assert not cold[ids].any()
        seen.update(ids.tolist())
    assert len(seen) > 0.6 * dataset.num_items  # the warm items do train
    # cold items do occur in the raw training prefixes (so the filter is what keeps them out)
    raw = np.concatenate([np.asarray(dataset.sequence(u)["items"])[:-2] for u in range(dataset.num_users)])
    assert cold[raw].sum() > 100
    # negatives: the uniform sampler draws warm items only, so cold rows get no gradient
    table = jax.random.normal(jax.random.key(0), (dataset.num_items + 1, 4))
    user = jax.random.normal(jax.random.key(1), (6, 4))
    tgt = jnp.asarray(np.flatnonzero(~cold[1:])[:6] + 1)

    def grads(pool, **kw):
        f = lambda t: sampled_softmax_loss(user, tgt, jnp.ones(6, bool), t, jax.random.key(2),  # noqa: E731
                                           SampledSoftmaxConfig(**kw), negative_pool=pool)[0]
        return np.asarray(jax.grad(f)(table))

    for kw in ({"num_negatives": 64}, {"full_softmax": True}):
        assert np.abs(grads(None, **kw)[cold]).sum() > 0
        assert np.abs(grads(task.warm_items, **kw)[cold]).sum() == 0


def _bruteforce(model, dataset, cold, max_len, truncate=0):
    """hr@k of cold and warm test targets in numpy: pessimistic rank among 1..N minus the history."""
    examples = []
    for u in range(dataset.num_users):
        items = np.asarray(dataset.sequence(u)["items"])
        ts = np.asarray(dataset.sequence(u)["timestamps"])
        if len(items) >= 3:
            hist, hts = (items[:-1], ts[:-1]) if not truncate else (items[:-1][-truncate:], ts[:-1][-truncate:])
            examples.append((hist, hts, int(items[-1])))
    ids = np.zeros((len(examples), max_len), np.int32)
    tss = np.zeros((len(examples), max_len), np.int32)
    for i, (hist, hts, _) in enumerate(examples):
        h, t = hist[-max_len:], hts[-max_len:]
        ids[i, max_len - len(h):], tss[i, max_len - len(t):] = h, t
    users = np.asarray(nnx.jit(user_embeddings)(model, jnp.asarray(ids), jnp.asarray(tss)), np.float64)
    table = np.asarray(model.item_embeddings(), np.float64)
    hits = {"cold": [], "warm": []}
    for (hist, _, target), user in zip(examples, users):
        s = table @ user
        ok = np.ones(len(s), bool)
        ok[0] = False
        ok[hist] = False
        rank = np.sum(ok & (s >= s[target])) if ok[target] else np.inf
        hits["cold" if cold[target] else "warm"].append([rank <= k for k in KS])
    return {g: np.mean(v, axis=0) for g, v in hits.items()}, {g: len(v) for g, v in hits.items()}


def test_coldstart_metrics_equal_bruteforce(dataset):
    model = build_model("hstu", {"embed_dim": 16, "num_layers": 1, "num_heads": 1, "attention_dim": 8,
                                 "linear_dim": 8, "max_seq_len": 12}, dataset.num_items, nnx.Rngs(0))
    cold = cold_item_mask(dataset.num_items, 0.2, seed=1)
    got = coldstart_metrics(model, dataset, cold, "test", batch_size=64, max_len=12, ks=KS, truncate=(2,))
    want, counts = _bruteforce(model, dataset, cold, 12)
    for g in ("cold", "warm"):
        assert got[g]["count"] == counts[g] > 0
        np.testing.assert_allclose([got[g][f"hr@{k}"] for k in KS], want[g], atol=1e-6)
        assert set(got[g]["most_popular"]) >= {"hr@10", "hr@50", "ndcg@10", "mrr"}
    assert got["cold"]["most_popular"]["hr@50"] == 0.0  # cold items have no training counts
    buckets = got["history_length"]
    assert list(buckets) == ["1-3", "4-10", "11-50", ">50"]
    assert sum(b["count"] for b in buckets.values()) == counts["cold"] + counts["warm"]
    trunc, _ = _bruteforce(model, dataset, cold, 12, truncate=2)
    n = got["truncated_history"]["2"]["count"]
    want_all = (trunc["cold"] * counts["cold"] + trunc["warm"] * counts["warm"]) / n
    np.testing.assert_allclose([got["truncated_history"]["2"][f"hr@{k}"] for k in KS], want_all, atol=1e-6)
    left = jnp.array([[0, 0, 4, 5, 6], [0, 0, 0, 0, 9]])
    assert keep_last(left, 2).tolist() == [[0, 0, 0, 5, 6], [0, 0, 0, 0, 9]]
    assert keep_last(jnp.array([[4, 5, 6, 0, 0]]), 2).tolist() == [[0, 5, 6, 0, 0]]


def test_train_and_eval_with_text_and_cold_items(recsys_run, recsys_cli, tmp_path):
    """A tiny fused run (text table from a file) trains, restores from its checkpoint alone and reports cold/warm;
    a run folder saved without the new config keys (an existing run) restores and evaluates as before."""
    ds = recsys_run.dataset
    text = np.random.default_rng(0).normal(size=(ds.num_items + 1, 8)).astype(np.float32)
    np.save(tmp_path / "text.npy", text)
    run_dir = tmp_path / "run"
    overrides = [*recsys_run.overrides[:2], f"train.run_dir={run_dir}", "train.steps=20", "train.eval_every=20",
                 "train.checkpoint.every=20", "data.cold_item_fraction=0.2", "model.item_text.mode=gated",
                 "model.item_text.dim=8", f"model.item_text.path={tmp_path / 'text.npy'}"]
    rc, out, err = recsys_cli(["train", "--config", recsys_run.config_path, *overrides])
    assert rc == 0, err[-3000:]
    os.remove(tmp_path / "text.npy")  # serving and eval need only the run folder
    rc, out, err = recsys_cli(["eval", "--checkpoint", str(run_dir)])
    assert rc == 0, err[-3000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert res["cold_items"] == round(0.2 * ds.num_items) and res["cold"]["count"] > 0 and res["warm"]["count"] > 0
    assert res["cold"]["count"] + res["warm"]["count"] == res["users"]
    assert set(res["truncated_history"]) == {"1", "2", "3"}
    n = res["cold"]["count"] + res["warm"]["count"]  # the top-level most-popular counts no cold item either
    for m in ("hr@10", "hr@50"):
        want = sum(res[g]["count"] * res[g]["most_popular"][m] for g in ("cold", "warm")) / n
        assert res["most_popular"][m] == pytest.approx(want, abs=1e-6), m
    from recsys_jax.train.restore import restore_run

    restored = restore_run(str(run_dir))
    restored_text = np.asarray(restored.model().items.text[...])[: ds.num_items + 1]
    np.testing.assert_array_equal(restored_text[1:], text[1:])
    np.testing.assert_array_equal(restored_text[0], 0.0)
    # an existing run folder: its config.yaml has none of the new keys
    old = tmp_path / "old_run"
    shutil.copytree(recsys_run.run_dir, old)
    cfg = yaml.safe_load(open(old / "config.yaml"))
    cfg["model"].pop("item_text")
    cfg["data"].pop("cold_item_fraction")
    cfg["data"].pop("cold_item_seed")
    yaml.safe_dump(cfg, open(old / "config.yaml", "w"))
    rc, out, err = recsys_cli(["eval", "--checkpoint", str(old), "--no-baseline"])
    assert rc == 0, err[-3000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert "cold" not in res
    rc, out, err = recsys_cli(["eval", "--checkpoint", recsys_run.run_dir, "--no-baseline"])
    assert json.loads(out.strip().splitlines()[-1])["metrics"] == res["metrics"]


def test_text_loss_weight_adds_the_text_only_loss(dataset, tmp_path):
    """model.item_text.text_loss_weight w: loss = fused loss + w x the same targets scored against the text-only
    table (cold items' representation); w = 0 is the loss of before."""
    text = np.random.default_rng(0).normal(size=(dataset.num_items + 1, 8)).astype(np.float32)
    np.save(tmp_path / "text.npy", text)
    base = ["data.cold_item_fraction=0.2", "data.max_len=8", "model.hstu.max_seq_len=8", f"train.run_dir={tmp_path}",
            "model.item_text.mode=sum", "model.item_text.dim=8", f"model.item_text.path={tmp_path / 'text.npy'}",
            "model.hstu.dropout=0.0"]
    tasks = {w: RecsysTask(load_config(None, [*base, f"model.item_text.text_loss_weight={w}"]), dataset)
             for w in (0.0, 2.0)}
    batch = next(tasks[0.0].train_data(DataContext(seed=0, batch_size=16, process_index=0, process_count=1)))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    model = tasks[0.0].create_model(nnx.Rngs(0))
    emb = model.items.embedding
    emb[...] = jax.random.normal(jax.random.key(3), emb.shape)  # ids that differ from the text alone
    rng = jax.random.key(5)
    plain, m0 = tasks[0.0].loss(model, batch, rng)
    both, m2 = tasks[2.0].loss(model, batch, rng)
    assert "text_only_loss" not in m0
    rng_loss, _ = jax.random.split(rng)
    user = model(batch["item_ids"], batch["timestamps"], deterministic=True)
    want, _ = sampled_softmax_loss(user, batch["target_ids"], batch["mask"], model.items.table(True, text_only=True),
                                   jax.random.fold_in(rng_loss, 1), tasks[2.0].cfg.loss,
                                   negative_pool=tasks[2.0].warm_items)
    np.testing.assert_allclose(float(m2["text_only_loss"]), float(want), rtol=1e-5)
    np.testing.assert_allclose(float(both), float(plain) + 2.0 * float(want), rtol=1e-5)
    assert float(m2["loss"]) == pytest.approx(float(both))


def test_text_knn_baseline_equals_bruteforce(dataset):
    """benchmarks/coldstart_text_knn.py: the no-training text-profile ranking, against numpy."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "coldstart_text_knn.py"
    spec = importlib.util.spec_from_file_location("coldstart_text_knn", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = np.random.default_rng(0).normal(size=(dataset.num_items + 1, 6)).astype(np.float32)
    cold = cold_item_mask(dataset.num_items, 0.2, 0)
    got = mod.text_knn(dataset, text, cold, "test", last=3, ks=KS, max_len=20)
    unit = text / np.linalg.norm(text, axis=1, keepdims=True)
    hits = {"cold": [], "warm": []}
    for u in range(dataset.num_users):
        items = np.asarray(dataset.sequence(u)["items"])
        if len(items) < 3:
            continue
        hist, target = items[:-1], int(items[-1])
        s = unit @ unit[hist[-3:]].sum(0)
        ok = np.ones(len(s), bool)
        ok[0] = False
        ok[hist] = False
        rank = np.sum(ok & (s >= s[target]))
        hits["cold" if cold[target] else "warm"].append([rank <= k for k in KS])
    for g in ("cold", "warm"):
        assert got[g]["count"] == len(hits[g]) > 0
        for k, want in zip(KS, np.mean(hits[g], axis=0)):
            assert got[g][f"hr@{k}"] == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="num_items \\+ 1"):
        mod.text_knn(dataset, text[:-1], cold, "test", last=3)


def test_late_fusion_diagnostic_is_the_model_at_zero_weight(dataset):
    """coldstart_text_knn --fuse: weight 0 is the model's own cold/warm ranking; a weight moves it."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "coldstart_text_knn.py"
    spec = importlib.util.spec_from_file_location("coldstart_text_knn_fuse", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = build_model("hstu", {"embed_dim": 16, "num_layers": 1, "num_heads": 1, "attention_dim": 8,
                                 "linear_dim": 8, "max_seq_len": 12}, dataset.num_items, nnx.Rngs(0))
    cold = cold_item_mask(dataset.num_items, 0.2, seed=1)
    text = np.random.default_rng(0).normal(size=(dataset.num_items + 1, 6)).astype(np.float32)
    want = coldstart_metrics(model, dataset, cold, "test", batch_size=64, max_len=12, ks=KS, truncate=())
    got = mod.text_knn(dataset, text, cold, "test", last=3, ks=KS, max_len=12, model=model, weight=0.0)
    heavy = mod.text_knn(dataset, text, cold, "test", last=3, ks=KS, max_len=12, model=model, weight=100.0)
    alone = mod.text_knn(dataset, text, cold, "test", last=3, ks=KS, max_len=12)
    for g in ("cold", "warm"):
        for k in KS:
            assert got[g][f"hr@{k}"] == pytest.approx(want[g][f"hr@{k}"], abs=1e-6)
            assert heavy[g][f"hr@{k}"] == pytest.approx(alone[g][f"hr@{k}"], abs=0.05)  # the profile dominates
