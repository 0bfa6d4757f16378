"""Length-grouped, trimmed training batches (data.length_grouping / data.length_bucket): the order, the shards of
several processes, exact resume (also after kill -9), and a trimmed batch's loss and gradients equal the full one's."""

import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from core_jax import data as data_lib
from core_jax.config import ConfigError
from core_jax.metrics import read_jsonl
from recsys_jax.data.loader import load_dataset
from recsys_jax.train.config import load_config
from recsys_jax.train.dataset_cache import resolve_dataset
from recsys_jax.train.task import RecsysTask

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MAX_LEN = 24
# synthetic users of 4 to 40 items: training lengths 1 to 24 (capped), so several 8-wide buckets
TINY = ["data.build.format=synthetic", "data.build.synthetic.num_users=160", "data.build.synthetic.num_items=80",
        "data.build.synthetic.num_categories=4", "data.build.synthetic.min_len=4", "data.build.synthetic.max_len=40",
        "data.build.max_seq_len=40", f"data.max_len={MAX_LEN}", "model.hstu.embed_dim=16",
        "model.hstu.attention_dim=8", "model.hstu.linear_dim=8", f"model.hstu.max_seq_len={MAX_LEN}",
        "model.hstu.num_layers=1", "model.sasrec.embed_dim=16", "model.sasrec.ffn_dim=16",
        f"model.sasrec.max_seq_len={MAX_LEN}", "model.sasrec.num_layers=1", "loss.num_negatives=16",
        "train.batch_size=16", "train.progress=false", "train.tensorboard=false", "train.eval_every=0",
        "train.best_metric=null", "eval.batch_size=64"]


@pytest.fixture(scope="module")
def data_args(tmp_path_factory):
    return [f"data.cache_dir={tmp_path_factory.mktemp('grouping_data')}"]


@pytest.fixture(scope="module")
def dataset(data_args):
    return load_dataset(resolve_dataset(load_config(None, [*TINY, *data_args]).data, verbose=False))


def _batches(it, n):
    return [next(it) for _ in range(n)]


def test_grouped_batches_are_trimmed_buckets_of_similar_lengths(dataset):
    n_batches = len(dataset.split_source("train")) // 16
    plain = _batches(dataset.train_iterator(batch_size=16, max_len=MAX_LEN, seed=3), 3 * n_batches)
    it = dataset.train_iterator(batch_size=16, max_len=MAX_LEN, seed=3, length_grouping=4, length_bucket=8)
    grouped = _batches(it, 3 * n_batches)
    widths = {b["item_ids"].shape[1] for b in grouped}
    assert widths <= {8, 16, 24} and len(widths) > 1
    for b in grouped:
        real = b["mask"].sum(1)
        width = b["item_ids"].shape[1]
        assert real.max() > width - 8  # the smallest bucket that holds the longest row
        for k in ("item_ids", "timestamps", "target_ids", "target_timestamps", "mask"):
            assert b[k].shape == (16, width)
        assert b["mask"][:, -1].all()  # left padding: every row ends in a real position
    fraction = lambda bs: sum(b["mask"].sum() for b in bs) / sum(b["mask"].size for b in bs)  # noqa: E731
    assert fraction(grouped) > fraction(plain) + 0.15
    # windows 0 and 1 (batches 0-7) lie in the first epoch of the stream: no user twice
    assert n_batches >= 8
    users = np.concatenate([b["user"] for b in grouped[:8]])
    assert len(set(users.tolist())) == len(users)
    # a new order every epoch
    assert [b["user"].tolist() for b in grouped[:4]] != [b["user"].tolist() for b in grouped[n_batches:n_batches + 4]]


def test_grouped_iterator_resumes_exactly(dataset):
    assert_resumes_exactly(dataset, skip=7, batch_size=16, max_len=MAX_LEN, seed=5, length_grouping=3,
                           length_bucket=8)  # mid-window


def assert_resumes_exactly(dataset, *, skip, **kw):
    """``dataset.train_iterator(**kw)`` restored from its state after ``skip`` batches gives the next 12 again."""
    it = dataset.train_iterator(**kw)
    _batches(it, skip)
    state = it.get_state()
    after = _batches(it, 12)
    again = dataset.train_iterator(**kw)
    again.set_state(state)
    for a, b in zip(after, _batches(again, 12)):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_process_shards_take_disjoint_slices_of_one_global_batch_of_one_length(dataset):
    kw = dict(batch_size=8, max_len=MAX_LEN, seed=2, length_grouping=4, length_bucket=8, shard_count=2)
    shards = [dataset.train_iterator(shard_index=i, **kw) for i in range(2)]
    single = dataset.train_iterator(batch_size=16, max_len=MAX_LEN, seed=2, length_grouping=4, length_bucket=8,
                                    shard_index=0, shard_count=1)
    for _ in range(10):
        a, b, whole = next(shards[0]), next(shards[1]), next(single)
        assert a["item_ids"].shape == b["item_ids"].shape == (8, whole["item_ids"].shape[1])
        assert a["user"].tolist() != b["user"].tolist()
        # the two processes' slices are the one-process global batch (same order, same length)
        assert sorted([*a["user"].tolist(), *b["user"].tolist()]) == sorted(whole["user"].tolist())


def test_trim_refuses_to_cut_real_positions():
    batch = {"item_ids": np.array([[0, 0, 3, 4], [0, 5, 6, 7]]), "user": np.array([1, 2])}
    np.testing.assert_array_equal(data_lib.trim_sequences(batch, 3, 4)["item_ids"], [[0, 3, 4], [5, 6, 7]])
    with pytest.raises(ValueError, match="real values beyond the batch length 2 of 4"):
        data_lib.trim_sequences(batch, 2, 4)
    assert data_lib.LengthGrouping(np.zeros(1), window=1, bucket=40, max_len=200).bucket_length(81) == 120
    assert data_lib.LengthGrouping(np.zeros(1), window=1, bucket=40, max_len=200).bucket_length(199) == 200
    assert data_lib.LengthGrouping(np.zeros(1), window=1, bucket=0, max_len=200).bucket_length(3) == 200


@pytest.mark.parametrize("model", ["hstu", "sasrec"])
def test_trimmed_batch_gives_the_same_loss_and_gradients(dataset, data_args, model):
    cfg = load_config(None, [*TINY, *data_args, f"model.name={model}", f"model.{model}.dropout=0.0"])
    task = RecsysTask(cfg, dataset)
    it = dataset.train_iterator(batch_size=16, max_len=MAX_LEN, seed=1, length_grouping=4, length_bucket=8)
    batch = next(b for b in _batches(it, 20) if b["item_ids"].shape[1] < MAX_LEN)
    width = batch["item_ids"].shape[1]
    full = {k: (np.pad(v, ((0, 0), (MAX_LEN - width, 0))) if v.ndim == 2 else v) for k, v in batch.items()}
    assert_same_loss_and_gradients(task, batch, full, atol=1e-6)


def assert_same_loss_and_gradients(task, batch, other, *, atol):
    """The task's loss and gradients (fresh model, fixed rng) agree on two forms of one batch; returns the
    jitted ``loss(params, batch)`` and the params."""
    graphdef, params, rest = nnx.split(task.create_model(nnx.Rngs(0)), nnx.Param, ...)

    def loss(p, b):
        m = nnx.merge(graphdef, p, rest, copy=True)
        return task.loss(m, {k: jnp.asarray(v) for k, v in b.items()}, jax.random.key(7))[0]

    grad_fn = jax.jit(jax.value_and_grad(loss))
    (l_a, g_a), (l_b, g_b) = (grad_fn(params, b) for b in (batch, other))
    np.testing.assert_allclose(l_a, l_b, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_a), jax.tree.leaves(g_b)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol)
    return jax.jit(loss), params


def test_config_checks():
    with pytest.raises(ConfigError, match="data.length_grouping"):
        load_config(None, ["data.length_grouping=4", "model.name=two_tower"])
    with pytest.raises(ConfigError, match="data.length_grouping"):
        load_config(None, ["data.length_bucket=-1"])


# one training process: the run of tests/.../test_recsys_length_grouping.py's TINY config, each step slowed down
# (so that it can be killed between checkpoints)
_DRIVER = """
import sys, time
from core_jax.loop import Hook
from recsys_jax.train.config import load_config
from recsys_jax.train.task import train
train(load_config(None, sys.argv[2:]), hooks=[Hook(every=1, fn=lambda *a: time.sleep(float(sys.argv[1])),
                                                   at_end=False)])
"""


def _start(args, sleep):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    return subprocess.Popen([sys.executable, "-c", _DRIVER, str(sleep), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _saved_steps(ckpt_dir):
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(d) for d in os.listdir(ckpt_dir)
                  if d.isdigit() and os.path.exists(os.path.join(ckpt_dir, d, "commit_success.txt")))


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"), "train")}


def test_kill9_resume_with_length_grouping_is_bit_identical(tmp_path, data_args):
    steps = 24
    common = [*TINY, *data_args, f"train.steps={steps}", "train.log_every=1", "train.checkpoint.every=4",
              "train.checkpoint.keep=20", "data.length_grouping=3", "data.length_bucket=8"]
    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    ref = _start([f"train.run_dir={ref_dir}", *common], sleep=0)
    out = ref.communicate(timeout=300)[0]
    assert ref.returncode == 0, out[-3000:]
    assert out.count("[compile ") > 1  # one program per batch length, each reported

    proc = _start([f"train.run_dir={run_dir}", *common], sleep=0.1)
    kill_after = random.Random().choice([4, 8, 12])
    ckpts = os.path.join(run_dir, "checkpoints")
    t0 = time.time()
    while not any(s >= kill_after for s in _saved_steps(ckpts)):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 300, "timed out"
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0, 0.2))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = max(_saved_steps(ckpts))
    assert resumed_from < steps
    again = _start([f"train.run_dir={run_dir}", *common], sleep=0)
    assert again.wait(timeout=300) == 0, again.stdout.read()[-3000:]

    want, got = _losses(ref_dir), _losses(run_dir)
    assert sorted(got) == list(range(1, steps + 1))
    for s in range(resumed_from + 1, steps + 1):
        assert got[s] == want[s], f"step {s}: resumed {got[s]!r} != uninterrupted {want[s]!r} (from {resumed_from})"

