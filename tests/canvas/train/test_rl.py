"""task=rl (DDPO-style multi-reward policy gradient) on the tiny run: disjoint prompts; a few steps, resumed exactly
after kill -9."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from test_resume import ROOT, kill_after_checkpoint
from test_resume import _start as start_driver

from canvas_jax.config import CanvasTrainConfig
from canvas_jax.runs import restore_run
from canvas_jax.train.rl_task import rl_prompts
from core_jax import config as config_lib
from core_jax.config import ConfigError
from core_jax.metrics import read_jsonl



def test_train_and_eval_prompts_are_disjoint(tmp_path):
    train, evals = rl_prompts(tiny_config(tmp_path, task="rl"))  # the Shapes defaults
    assert len(train) > 300 and evals and not set(train) & set(evals)
    assert all("green triangle" in p for p in evals) and not any("green triangle" in p for p in train)
    (tmp_path / "a.txt").write_text("a small red square at the top left\n"
                                    "a small red square at the top left and a large green triangle at the center\n")
    (tmp_path / "b.txt").write_text("a small red square at the top left\n")
    with pytest.raises(ConfigError, match="in both"):
        rl_prompts(tiny_config(tmp_path, task="rl", **{"rl.train_prompts": str(tmp_path / "b.txt"),
                                                       "rl.eval_prompts": str(tmp_path / "a.txt")}))
    with pytest.raises(ConfigError, match="held-out pair"):
        rl_prompts(tiny_config(tmp_path, task="rl", **{"rl.train_prompts": str(tmp_path / "a.txt")}))
    with pytest.raises(ConfigError, match="rl.sampler"):
        tiny_config(tmp_path, task="rl", **{"rl.sampler": "dpmpp_2m"})
    for name in ("rl_shapes", "reward_model_shapes"):  # the shipped configs load, init_from overridable
        cfg = config_lib.load(CanvasTrainConfig, Path(ROOT) / "configs" / "canvas" / f"{name}.yaml",
                              ["init_from=runs/other"])
        assert cfg.task == name.rsplit("_", 1)[0] and cfg.init_from == "runs/other"


def _start(run_dir, vae_dir, steps, sleep, rl_env):
    # both runs share compiled programs through JAX's persistent cache (the same executables). Optimised code
    # (the last flag wins over tests/conftest.py's level 0): ~20 RL steps and 6 rollouts run here, and at level 0
    # one step runs ~15x slower (~5 s against ~0.3 s), far more than the longer compile costs
    return start_driver(run_dir, vae_dir, steps, sleep, {**rl_env, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                                                        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"},
                        xla_flags="--xla_backend_optimization_level=2")


def _logged(path):
    keys = ("loss", "reward_total", "approx_kl", "kl")
    return [(r["step"], tuple(r[k] for k in keys)) for r in read_jsonl(path, "train")] if os.path.exists(path) else []


def test_rl_trains_and_resumes_exactly_after_kill9(tmp_path, tiny_vae_dir, t2i_run):
    """A tiny run (4 steps per rollout, held-out evaluation every 4 steps, checkpoints every 3) is killed with -9
    after a checkpoint: it resumes mid-rollout from the checkpointed buffer and per-prompt stats and recomputes the
    steps logged after the checkpoint bit for bit (new rollouts included). Its metrics show each reward, the PPO
    ratio at 1 on a fresh rollout, the KL to the base, and the held-out evaluation."""
    run_dir, steps = str(tmp_path / "run"), 10
    metrics, ckpts = os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "checkpoints")
    rl_env = {"RL_INIT_FROM": t2i_run, "RL_PROMPTS": str(tmp_path), "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla")}
    proc = _start(run_dir, tiny_vae_dir, steps, 0.5, rl_env)
    resumed_from, first = kill_after_checkpoint(proc, ckpts, lambda: _logged(metrics))
    overlap = [s for s in first if s > resumed_from]
    assert len(overlap) >= 2 and resumed_from < steps
    state = json.loads(next(Path(ckpts, str(resumed_from), "data").glob("process_0-of-1*")).read_text())
    state = json.loads(state) if isinstance(state, str) else state
    assert state["rollouts"] >= 1 and state["buffer"] and state["stats"]["buffers"]  # buffer + per-prompt stats

    proc = _start(run_dir, tiny_vae_dir, steps, 0, rl_env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    rows = _logged(metrics)
    resumed = dict(rows[len(first):])
    assert sorted(resumed) == list(range(resumed_from + 1, steps + 1))
    for s in overlap:
        assert resumed[s] == first[s], f"step {s}: resumed {resumed[s]!r} != before the kill {first[s]!r}"

    rows = {r["step"]: r for r in read_jsonl(metrics, "train")}  # the resumed run's rows last
    for key in ("reward_checker", "reward_diversity", "reward_total", "policy_loss", "clip_frac", "kl"):
        assert key in rows[1], sorted(rows[1])
    np.testing.assert_allclose(rows[1]["reward_total"], rows[1]["reward_checker"] + 0.5 * rows[1]["reward_diversity"],
                               rtol=1e-5)
    # the first step of each rollout (4 steps each) trains on what its own weights just sampled: ratio 1 up to
    # float noise (and no KL to the base at step 1: the LoRA adapters start at zero); later steps moved
    for s in (1, 5, 9):
        assert rows[s]["approx_kl"] < 1e-6 and rows[s]["clip_frac"] == 0.0, rows[s]
    assert rows[1]["kl"] < 1e-6 and rows[4]["approx_kl"] > 1e-4 and rows[4]["kl"] > 1e-4
    held = read_jsonl(metrics, "heldout")
    assert {4, 8, 10} <= {r["step"] for r in held}
    assert {"reward_total", "reward_checker", "reward_diversity", "adherence"} <= set(held[-1])
    run = restore_run(run_dir, ema=False)  # the run folder reads back (LoRA adapters, no frozen copy)
    assert run.model.reference is None and os.path.isfile(os.path.join(run_dir, "lora", "pytorch_lora_weights.safetensors"))


def test_timestep_fraction_trains_on_a_random_subset_of_the_steps(tmp_path, t2i_run):
    """rl.timestep_fraction=0.5: the loss is the full-trajectory loss restricted to the minibatch's step subset."""
    import jax
    from flax import nnx

    from canvas_jax.train.tasks import make_task

    over = {"rl.num_steps": 4, "rl.sampler": "ddpm", "train.compute_dtype": "float32"}
    half = make_task(tiny_config(tmp_path, task="rl", init_from=t2i_run, **over, **{"rl.timestep_fraction": 0.5}))
    full = make_task(tiny_config(tmp_path, task="rl", init_from=t2i_run, **over))
    n = len(full.noisy_steps)
    assert full.steps_per_update == n and half.steps_per_update == max(1, round(n / 2)) < n
    model = half.create_model(nnx.Rngs(0))
    b, shape = 2, (8, 8, model.unet.config["in_channels"])
    k = jax.random.split(jax.random.key(1), 4)
    batch = {"states": jax.random.normal(k[0], (b, 5, *shape)), "log_probs": jax.random.normal(k[1], (b, 4)) - 50.0,
             "advantages": jax.random.normal(k[2], (b,)),
             "text_emb": jax.random.normal(k[3], (b, 12, model.unet.config["cross_attention_dim"]))}
    rng = jax.random.key(7)
    got, _ = half.loss(model, batch, rng)
    subset = np.asarray(half.step_subset(jax.random.split(rng)[1]))
    assert len(set(subset.tolist())) == half.steps_per_update and set(subset) <= set(full.noisy_steps)
    full.noisy_steps = subset
    want, _ = full.loss(model, batch, rng)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    subsets = {tuple(np.asarray(half.step_subset(jax.random.key(i)))) for i in range(20)}
    assert len(subsets) > 1  # the subset changes with the key
    with pytest.raises(ConfigError, match="timestep_fraction"):
        tiny_config(tmp_path, task="rl", **{"rl.timestep_fraction": 0.0})
