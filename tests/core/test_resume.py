"""Exact resume after kill -9, and a clean stop with a checkpoint on SIGTERM."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from core_jax.metrics import read_jsonl

_XLA_BASE = os.environ.get("XLA_FLAGS", "")  # the session's flags (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _start(args, sleep):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "TOY_STEP_SLEEP": str(sleep),
           "XLA_FLAGS": _XLA_BASE + " --xla_force_host_platform_device_count=1"}
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "core", "toy_driver.py"), "train", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _saved_steps(ckpt_dir):
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(d) for d in os.listdir(ckpt_dir)
                  if d.isdigit() and os.path.exists(os.path.join(ckpt_dir, d, "commit_success.txt")))


def _wait_for(pred, proc, timeout=120):
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def _losses(run_dir):
    by_step = {}
    for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"), "train"):
        by_step[r["step"]] = r["loss"]  # a resumed run re-logs steps after the checkpoint: keep the last
    return by_step


def test_kill9_resume_is_bit_identical(tmp_path, toy_data, driver):
    steps = 40
    common = [f"data.dir={toy_data}", f"train.steps={steps}", "train.log_every=1", "train.eval_every=0",
              "train.checkpoint.every=5", "train.checkpoint.keep=20", "train.batch_size=16"]
    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    driver.run("train", f"train.run_dir={ref_dir}", *common)

    kill_after = random.Random().choice([5, 10, 15, 20])
    proc = _start([f"train.run_dir={run_dir}", *common], sleep=0.05)
    ckpts = os.path.join(run_dir, "checkpoints")
    _wait_for(lambda: any(s >= kill_after for s in _saved_steps(ckpts)), proc)
    time.sleep(random.Random().uniform(0, 0.2))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = max(_saved_steps(ckpts))
    assert resumed_from < steps
    driver.run("train", f"train.run_dir={run_dir}", *common)

    ref, got = _losses(ref_dir), _losses(run_dir)
    assert sorted(got) == list(range(1, steps + 1))
    for s in range(resumed_from + 1, steps + 1):
        assert got[s] == ref[s], f"step {s}: resumed {got[s]!r} != uninterrupted {ref[s]!r} (resumed from {resumed_from})"


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_current_step_and_exits_with_128_plus_signal(tmp_path, toy_data, sig, code):
    """The console entry (python -m core_jax.toy) saves a checkpoint at the current step, then exits with
    128 + the signal number, so schedulers can tell preemption from completion."""
    run_dir = str(tmp_path / "run")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
           "XLA_FLAGS": _XLA_BASE + " --xla_force_host_platform_device_count=1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "core_jax.toy", "--config", "configs/toy.yaml", f"train.run_dir={run_dir}",
         f"data.dir={toy_data}", "train.steps=1000000", "train.log_every=1", "train.eval_every=0",
         "train.checkpoint.every=0", "train.batch_size=16", "train.progress=false", "train.tensorboard=false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    _wait_for(lambda: os.path.exists(metrics) and len(read_jsonl(metrics)) >= 5, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out[-3000:]
    assert f"stopped by {sig.name}" in out and "Traceback" not in out, out[-3000:]
    last_logged = max(r["step"] for r in read_jsonl(metrics, "train"))
    assert _saved_steps(os.path.join(run_dir, "checkpoints")) == [last_logged]
