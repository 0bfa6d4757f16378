"""The recsys training task on the shared loop: loss, best checkpoint, exact evaluation, resume, config."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from core_jax.config import ConfigError
from core_jax.metrics import read_jsonl
from recsys_jax.eval.baselines import evaluate_most_popular
from recsys_jax.eval.evaluate import evaluate_model, user_embeddings
from recsys_jax.train.config import load_config
from recsys_jax.train.restore import restore_run
from recsys_jax.train.task import train

KS = (10, 50, 200)


def _rows(run_dir, split):
    return read_jsonl(os.path.join(run_dir, "metrics.jsonl"), split)


def _split_examples(dataset, split):
    """(history, target) of every user of ``split``, from the stored sequences."""
    out = []
    for n, user in zip(dataset.lengths, dataset.record_users):
        if n < 3:
            continue
        items = np.asarray(dataset.sequence(int(user))["items"])
        ts = np.asarray(dataset.sequence(int(user))["timestamps"])
        t = n - 2 if split == "validation" else n - 1
        out.append((items[:t], ts[:t], int(items[t])))
    return out


def _bruteforce(scores_fn, examples, num_items):
    """Exact metrics in numpy: pessimistic 1-based rank of the target among items 1..N minus history."""
    sums = {f"{m}@{k}": 0.0 for m in ("hr", "ndcg") for k in KS} | {"mrr": 0.0}
    for i, (hist, _, target) in enumerate(examples):
        s = np.asarray(scores_fn(i), np.float64)
        eligible = np.ones(num_items + 1, bool)
        eligible[0] = False
        eligible[hist] = False
        rank = np.inf if not eligible[target] else float(np.sum(eligible & (s >= s[target])))
        for k in KS:
            sums[f"hr@{k}"] += rank <= k
            sums[f"ndcg@{k}"] += 1 / np.log2(1 + rank) if rank <= k else 0.0
        sums["mrr"] += 1 / rank
    return {k: v / len(examples) for k, v in sums.items()}


def _model_user_embeddings(model, examples, max_len):
    ids = np.zeros((len(examples), max_len), np.int32)
    ts = np.zeros((len(examples), max_len), np.int32)
    for i, (hist, hts, _) in enumerate(examples):
        h, t = hist[-max_len:], hts[-max_len:]
        ids[i, max_len - len(h):], ts[i, max_len - len(t):] = h, t
    emb = nnx.jit(user_embeddings)(model, jnp.asarray(ids), jnp.asarray(ts))
    return np.asarray(emb, np.float64)


def test_train_loss_decreases_and_beats_most_popular(recsys_run):
    assert recsys_run.final["step"] == 90
    losses = [r["loss"] for r in _rows(recsys_run.run_dir, "train")]
    assert len(losses) == 9 and np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses
    pop = evaluate_most_popular(recsys_run.dataset, "validation", ks=KS)
    assert recsys_run.final["eval_ndcg@10"] > 1.5 * pop["ndcg@10"], (recsys_run.final, pop)
    assert recsys_run.final["eval_hr@50"] > pop["hr@50"]
    # the run folder carries what serving needs
    for name in ("id_maps.json", "item_counts.json", "items.json", "source.json"):
        assert os.path.isfile(os.path.join(recsys_run.run_dir, "dataset", name))


def test_best_checkpoint_is_the_best_validation_step(recsys_run, restored_best):
    evals = _rows(recsys_run.run_dir, "eval")
    assert [r["step"] for r in evals] == [30, 60, 90]
    values = [r["ndcg@10"] for r in evals]
    best_step = evals[int(np.argmax(values))]["step"]
    assert restored_best.which == "best" and restored_best.step == best_step
    # evaluating the restored best state reproduces the value logged for it
    again = restored_best.trainer.evaluate(restored_best.state)
    np.testing.assert_allclose(again["ndcg@10"], max(values), rtol=1e-6)
    latest = restore_run(recsys_run.run_dir, which="latest")
    assert latest.step == 90


def test_eval_equals_bruteforce_numpy_ranking(recsys_run, restored_best):
    ds, cfg = recsys_run.dataset, recsys_run.cfg
    model = restored_best.model()
    table = np.asarray(model.item_embeddings(), np.float64)
    for split in ("validation", "test"):
        examples = _split_examples(ds, split)
        assert len(examples) % cfg.eval.batch_size != 0  # the last batch is padded: weights must handle it
        users = _model_user_embeddings(model, examples, cfg.data.max_len)
        expected = _bruteforce(lambda i: table @ users[i], examples, ds.num_items)
        got = evaluate_model(model, ds, split, batch_size=cfg.eval.batch_size, max_len=cfg.data.max_len, ks=KS)
        assert got["count"] == len(examples)
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, abs=1e-6), (split, k)
        right = evaluate_model(model, ds, split, batch_size=cfg.eval.batch_size, max_len=cfg.data.max_len, ks=KS,
                               padding="right")
        for k, v in expected.items():
            assert right[k] == pytest.approx(v, abs=1e-6), (split, k, "right padding")
        if split == "validation":  # the loop's evaluation (sums + count over padded batches) agrees
            loop = restored_best.trainer.evaluate(restored_best.state)
            for k, v in expected.items():
                assert loop[k] == pytest.approx(v, abs=1e-6), k
    assert expected["hr@200"] >= expected["hr@50"] >= expected["hr@10"] > 0


def test_most_popular_equals_bruteforce(recsys_run):
    ds = recsys_run.dataset
    counts = ds.item_counts.astype(np.float64)
    examples = _split_examples(ds, "test")
    expected = _bruteforce(lambda i: counts, examples, ds.num_items)
    got = evaluate_most_popular(ds, "test", batch_size=64, ks=KS)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k


def test_resumed_run_continues_from_its_checkpoint(recsys_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(recsys_run.run_dir, run_dir)
    cfg = load_config(recsys_run.config_path, [*recsys_run.overrides, f"train.run_dir={run_dir}",
                                               "train.steps=100"])
    state, metrics = train(cfg, dataset=recsys_run.dataset)
    assert int(jax.device_get(state["step"])) == 100
    steps = [r["step"] for r in _rows(run_dir, "train")]
    assert steps == list(range(10, 91, 10)) + [100]  # nothing up to step 90 was trained again
    assert np.isfinite(metrics["loss"]) and "eval_ndcg@10" in metrics


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.hstu.max_seq_len"):
        load_config(None, ["data.max_len=64"])
    with pytest.raises(ConfigError, match="did you mean 'loss.temperature'"):
        load_config(None, ["loss.temprature=0.1"])
    with pytest.raises(ConfigError, match="data.build.input"):
        load_config(None, ["data.build.format=movielens"])
    with pytest.raises(ConfigError, match="loss"):
        load_config(None, ["loss.num_negatives=0"])
    cfg = load_config(None, ["train.steps=7"])  # overrides keep the other defaults
    assert cfg.train.steps == 7 and cfg.train.best_metric == "ndcg@10" and cfg.model.hstu.max_seq_len == 50
