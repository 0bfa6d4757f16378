"""The loop's features on a tiny in-memory task: accumulation, NaN guard, EMA, bf16, eval, metrics."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from core_jax import config as config_lib
from core_jax.data import make_iterator
from core_jax.loop import NonFiniteError, Trainer
from core_jax.metrics import read_jsonl
from core_jax.toy import ToyConfig

DIM = 8


def _examples(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return [{"x": x[i], "y": x[i] @ np.arange(DIM, dtype=np.float32), "poison": np.float32(0)} for i in range(n)]


class LinearTask:
    def __init__(self, examples):
        self.examples = examples

    def create_model(self, rngs):
        return nnx.Linear(DIM, 1, kernel_init=nnx.with_partitioning(nnx.initializers.normal(1.0), ("embed", None)),
                          rngs=rngs)

    def loss(self, model, batch, rng):
        pred = model(batch["x"])[:, 0]
        # a poisoned example makes the loss NaN (to exercise the guard)
        loss = jnp.mean(jnp.square(pred - batch["y"])) + jnp.sum(jnp.where(batch["poison"] > 0, jnp.nan, 0.0))
        return loss, {"pred_mean": jnp.mean(pred)}

    def eval_step(self, model, batch):
        return {"mse": jnp.mean(jnp.square(model(batch["x"])[:, 0] - batch["y"]))}

    def train_data(self, ctx):
        return make_iterator(self.examples, batch_size=ctx.batch_size, seed=ctx.seed, shuffle=False)

    def eval_data(self, ctx):
        return make_iterator(self.examples, batch_size=ctx.batch_size, shuffle=False, num_epochs=1)


def _cfg(tmp_path, *overrides):
    return config_lib.load(ToyConfig, None, [f"train.run_dir={tmp_path}", "train.progress=false", "train.tensorboard=false",
                                             "train.batch_size=16", "train.log_every=1", "train.checkpoint.every=0",
                                             "optim.name=sgd", "optim.learning_rate=0.01", "optim.grad_clip_norm=null",
                                             *overrides])


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    one, _ = Trainer(LinearTask(_examples()), _cfg(tmp_path / "a", "train.steps=3")).fit()
    acc, _ = Trainer(LinearTask(_examples()), _cfg(tmp_path / "b", "train.steps=3", "train.grad_accum_steps=4")).fit()
    for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(acc["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_nan_guard_skips_and_counts(tmp_path):
    ex = _examples()
    ex[20]["poison"] = np.float32(1)  # batch 2 (examples 16..31) is poisoned
    trainer = Trainer(LinearTask(ex), _cfg(tmp_path, "train.steps=3"))
    state, metrics = trainer.fit()
    assert metrics["nan_skips"] == 1
    rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"), "train")
    assert [r["nan_skips"] for r in rows] == [0, 1, 1]
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_nan_guard_stop_policy_raises_clearly(tmp_path):
    ex = _examples()
    ex[3]["poison"] = np.float32(1)
    with pytest.raises(NonFiniteError, match="train.nan_policy=stop"):
        Trainer(LinearTask(ex), _cfg(tmp_path, "train.steps=3", "train.nan_policy=stop")).fit()


def test_ema_bf16_eval_and_throughput_metrics(tmp_path):
    trainer = Trainer(LinearTask(_examples()), _cfg(tmp_path, "train.steps=4", "train.ema_decay=0.5",
                                                    "train.compute_dtype=bfloat16"))
    state, metrics = trainer.fit()
    params = jax.tree.leaves(state["params"])
    assert all(p.dtype == jnp.float32 for p in params)
    assert not all(np.allclose(a, b) for a, b in zip(params, jax.tree.leaves(state["ema"])))
    assert np.isfinite(metrics["loss"]) and metrics["examples_per_s"] > 0 and metrics["flops_per_s"] > 0
    assert "eval_mse" in metrics
    assert set(read_jsonl(os.path.join(tmp_path, "metrics.jsonl"), "eval")[-1]) >= {"step", "mse"}
    assert os.path.exists(os.path.join(tmp_path, "config.yaml"))


@pytest.mark.parametrize("warmup, decay", [(False, 0.9), (True, 0.1)])
def test_ema_update_rule(tmp_path, warmup, decay):
    # With warm-up the first update's decay is min(0.9, (1 + 0) / (10 + 0)) = 0.1.
    trainer = Trainer(LinearTask(_examples()), _cfg(tmp_path, "train.steps=1", "train.ema_decay=0.9",
                                                     f"train.ema_warmup={str(warmup).lower()}"))
    init = jax.device_get(trainer.init_state()["params"])
    state, _ = trainer.fit()
    for e, p0, p1 in zip(jax.tree.leaves(state["ema"]), jax.tree.leaves(init), jax.tree.leaves(state["params"])):
        np.testing.assert_allclose(e, decay * p0 + (1 - decay) * np.asarray(p1), rtol=1e-6)


def test_batch_must_divide(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="train.batch_size"):
        Trainer(LinearTask(_examples()), _cfg(tmp_path, "train.batch_size=10", "train.grad_accum_steps=4"))


def test_best_checkpoint_and_early_stopping(tmp_path):
    import json

    from core_jax.checkpoint import Checkpointer

    # lr 0 after warm-up-free constant schedule: eval mse never improves after the first eval
    cfg = _cfg(tmp_path, "train.steps=50", "train.eval_every=2", "train.best_metric=mse", "train.best_mode=min",
               "train.early_stop_patience=3", "optim.learning_rate=0.0")
    state, _ = Trainer(LinearTask(_examples()), cfg).fit()
    best = json.load(open(tmp_path / "best.json"))
    assert best["step"] == 2 and best["metric"] == "mse"
    assert int(state["step"]) == 8  # evals at 2 (best), 4, 6, 8 -> 3 without improvement
    assert Checkpointer(tmp_path / "best").latest_step() == 2


def test_best_checkpoint_follows_improvement(tmp_path):
    import json

    cfg = _cfg(tmp_path, "train.steps=6", "train.eval_every=2", "train.best_metric=mse", "train.best_mode=min")
    Trainer(LinearTask(_examples()), cfg).fit()
    assert json.load(open(tmp_path / "best.json"))["step"] == 6


def test_best_decision_comes_from_process_zero(tmp_path, monkeypatch):
    """On a process other than 0, the best-checkpoint and early-stop decisions are process 0's broadcast, not
    read from best.json (which this host may not see, or see stale): otherwise processes disagree on the
    collective best-checkpoint save and deadlock."""
    import json

    from core_jax import loop

    cfg = _cfg(tmp_path, "train.steps=2", "train.best_metric=mse", "train.best_mode=min", "train.early_stop_patience=1")
    trainer = Trainer(LinearTask(_examples()), cfg)
    state = trainer.init_state()
    # this host's (stale) view: a better value than the one now measured, so on its own it would not save
    (tmp_path / "best.json").write_text(json.dumps({"step": 1, "value": 0.0, "metric": "mse", "evals_since": 5}))
    sent = []
    monkeypatch.setattr(loop.jax, "process_count", lambda: 2)
    monkeypatch.setattr(loop.multihost_utils, "broadcast_one_to_all", lambda x: sent.append(x) or np.array([1, 0]))
    monkeypatch.setattr(trainer, "evaluate", lambda state: {"mse": 1.0})
    saved = []
    monkeypatch.setattr(trainer.best_checkpointer, "save", lambda step, *a, **k: saved.append(step))
    trainer.is_main = False
    from core_jax.metrics import MetricWriter

    stop = trainer._eval_and_track(MetricWriter(str(tmp_path), enabled=False, tensorboard=False), 7, state, {})
    assert saved == [7] and stop is False  # process 0 said: new best, do not stop
    assert len(sent) == 1  # one broadcast per eval
    assert json.loads((tmp_path / "best.json").read_text())["step"] == 1  # only process 0 writes best.json


def test_eval_with_count_is_an_exact_weighted_mean(tmp_path):
    class CountTask(LinearTask):
        def eval_step(self, model, batch):
            err = jnp.square(model(batch["x"])[:, 0] - batch["y"])
            keep = jnp.arange(err.shape[0]) < 3  # an uneven number of valid examples per batch
            return {"mse": jnp.sum(jnp.where(keep, err, 0.0)), "count": jnp.sum(keep)}

    trainer = Trainer(CountTask(_examples()), _cfg(tmp_path, "train.steps=1"))
    state = trainer.init_state()
    model = trainer.model(state)
    x = np.stack([e["x"] for e in _examples()]).reshape(4, 16, DIM)[:, :3].reshape(-1, DIM)
    y = np.stack([e["y"] for e in _examples()]).reshape(4, 16)[:, :3].reshape(-1)
    expected = float(np.mean((np.asarray(model(x))[:, 0] - y) ** 2))
    np.testing.assert_allclose(trainer.evaluate(state)["mse"], expected, rtol=1e-5)


def test_trainable_filter_freezes_the_rest(tmp_path):
    class Two(nnx.Module):
        def __init__(self, rngs):
            self.frozen = nnx.Linear(DIM, DIM, rngs=rngs)
            self.head = nnx.Linear(DIM, 1, rngs=rngs)

        def __call__(self, x):
            return self.head(self.frozen(x))

    class HeadOnly(LinearTask):
        trainable = nnx.All(nnx.Param, nnx.PathContains("head"))

        def create_model(self, rngs):
            return Two(rngs)

    trainer = Trainer(HeadOnly(_examples()), _cfg(tmp_path, "train.steps=3", "optim.name=adam"))
    init = jax.device_get(trainer.init_state())
    state, _ = trainer.fit()
    assert set(state["params"].keys()) == {"head"}
    np.testing.assert_array_equal(state["rest"]["frozen"]["kernel"][...], init["rest"]["frozen"]["kernel"][...])
    assert not np.allclose(state["params"]["head"]["kernel"][...], init["params"]["head"]["kernel"][...])
    # the optimizer state covers only the trainable part
    assert all(x.shape in {(DIM, 1), (1,), ()} for x in jax.tree.leaves(state["opt"]))


def test_time_limit_hook_stops_with_a_checkpoint(tmp_path, monkeypatch):
    from core_jax.loop import time_limit_hook

    def no_signals(*args):
        raise AssertionError(f"the time limit must stop through the trainer, not os.kill{args}")

    monkeypatch.setattr(os, "kill", no_signals)
    cfg = _cfg(tmp_path, "train.steps=50", "train.checkpoint.every=0")
    hook = time_limit_hook(0.0)  # fires at its second call: the first starts the clock
    state, _ = Trainer(LinearTask(_examples()), cfg, hooks=[hook]).fit()
    step = int(jax.device_get(state["step"]))
    assert hook.fn.stopped and step < 50
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [str(step)]
