"""Packed training batches (data.pack_rows: HSTU, SASRec, unified runs): the iterator, exact resume, the same loss
and gradients as the padded batch, a run through the loop, and the config checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from core_jax import packing
from core_jax.config import ConfigError
from core_jax.metrics import read_jsonl
from core_jax.task import DataContext
from recsys_jax.train.config import load_config
from recsys_jax.train.task import RecsysTask, make_task, train
from tests.recsys.train.test_recsys_length_grouping import (  # noqa: F401  (fixtures)
    MAX_LEN, TINY, _batches, assert_resumes_exactly, assert_same_loss_and_gradients, data_args, dataset)

KEYS = ("item_ids", "timestamps", "target_ids", "target_timestamps", "mask")


def test_packed_batches_hold_the_same_users_in_fewer_rows(dataset):
    n = len(dataset.split_source("train")) // 16
    plain = _batches(dataset.train_iterator(batch_size=16, max_len=MAX_LEN, seed=3, length_grouping=1), n)
    packed = _batches(dataset.train_iterator(batch_size=16, max_len=MAX_LEN, seed=3, pack_rows=4), n)
    for p, q in zip(plain, packed):
        assert q["item_ids"].shape[0] % 4 == 0 and q["item_ids"].shape[0] < 16
        assert q["user"].tolist() == p["user"].tolist()  # same users, same order, per-user fields kept
        back = packing.unpack_sequences(q, 16, max_len=MAX_LEN)
        for k in KEYS:
            np.testing.assert_array_equal(back[k], p[k])
    real = lambda bs: sum(b["mask"].sum() for b in bs) / sum(b["mask"].size for b in bs)  # noqa: E731
    assert real(packed) > real(plain) + 0.2
    # one epoch: every training user once
    users = np.concatenate([b["user"] for b in packed])
    assert len(set(users.tolist())) == len(users) == 16 * n


def test_packed_iterator_resumes_exactly(dataset):
    assert_resumes_exactly(dataset, skip=5, batch_size=16, max_len=MAX_LEN, seed=5, pack_rows=2)


@pytest.mark.parametrize("model", ["hstu:query", "hstu:next", "sasrec"])
def test_packed_batch_gives_the_padded_batchs_loss_and_gradients(dataset, data_args, model):
    name, _, time_bias_from = model.partition(":")
    cfg = load_config(None, [*TINY, *data_args, f"model.name={name}", f"model.{name}.dropout=0.0",
                             *([f"model.hstu.time_bias_from={time_bias_from}"] if time_bias_from else [])])
    task = RecsysTask(cfg, dataset)
    packed = next(dataset.train_iterator(batch_size=16, max_len=MAX_LEN, seed=1, pack_rows=2))
    padded = packing.unpack_sequences(packed, 16, max_len=MAX_LEN)
    assert packed["item_ids"].shape[0] < 16
    loss, params = assert_same_loss_and_gradients(task, packed, padded, atol=5e-6)
    # without the segments the rows' users would see each other: a different loss
    mixed = {k: v for k, v in packed.items() if k not in (packing.SEGMENT_IDS, packing.POSITIONS)}
    assert abs(float(loss(params, mixed)) - float(loss(params, padded))) > 1e-4


def test_packed_training_run(tmp_path, data_args):
    run_dir = str(tmp_path / "run")
    cfg = load_config(None, [*TINY, *data_args, "train.steps=6", "train.log_every=1", f"train.run_dir={run_dir}",
                             "data.pack_rows=4", "train.eval_every=6", "train.best_metric=ndcg@10"])
    _, metrics = train(cfg)
    losses = [r["loss"] for r in read_jsonl(f"{run_dir}/metrics.jsonl", "train")]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert any(r.get("ndcg@10") is not None for r in read_jsonl(f"{run_dir}/metrics.jsonl", "eval"))


def test_config_checks():
    with pytest.raises(ConfigError, match="data.pack_rows"):
        load_config(None, ["data.pack_rows=8", "model.name=two_tower"])
    with pytest.raises(ConfigError, match="data.pack_rows"):
        load_config(None, ["data.pack_rows=8", "data.length_bucket=40", "data.length_grouping=4"])
    with pytest.raises(ConfigError, match="data.pack_rows"):
        load_config(None, ["data.pack_rows=-1"])
    with pytest.raises(ConfigError, match="multiple of train.grad_accum_steps"):
        load_config(None, ["data.pack_rows=6", "train.grad_accum_steps=4"])


def test_unified_packed_batch_gives_the_padded_batchs_loss(unified_run):
    """The multi-label task on packed rows: event features and per-label targets ([B, L, labels]) packed too."""
    cfg, _, _, _ = unified_run
    # whole histories (9 to 55 events; a time split: upper bounds of every event) packed 2 or more a row of 60
    model_cfg = dataclasses.replace(cfg.model, hstu=dataclasses.replace(cfg.model.hstu, max_seq_len=60, dropout=0.0))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pack_rows=2, max_len=60), model=model_cfg)
    task = make_task(cfg)
    packed = next(iter(task.train_data(DataContext(seed=0, batch_size=8, process_index=0, process_count=1))))
    assert packed["label_mask"].shape[:2] == packed["item_ids"].shape and packed["item_ids"].shape[0] < 8
    padded = packing.unpack_sequences(packed, 8, max_len=60)
    model = task.create_model(nnx.Rngs(0))
    loss = nnx.jit(lambda m, b: task.loss(m, b, jax.random.key(3))[0])
    as_jax = lambda b: {k: jnp.asarray(v) for k, v in b.items()}  # noqa: E731
    np.testing.assert_allclose(loss(model, as_jax(packed)), loss(model, as_jax(padded)), rtol=1e-5)
