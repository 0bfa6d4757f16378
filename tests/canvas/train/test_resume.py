"""A text-to-image run killed with -9 resumes from its checkpoint and continues exactly.

The killed run logged steps past its last checkpoint; the resumed run recomputes those steps and must
log bit-identical losses (data order, noise and EMA restored; the text-embedding and VAE-latent caches
re-encoded to the same bits).
"""

import os
import signal
import subprocess
import sys
import time

from core_jax.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DRIVER = os.path.join(os.path.dirname(__file__), "driver.py")


def _start(run_dir, vae_dir, steps, sleep, extra_env=None, xla_flags=""):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "STEP_SLEEP": str(sleep), **(extra_env or {}),
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1 {xla_flags}"}
    return subprocess.Popen([sys.executable, DRIVER, run_dir, vae_dir, str(steps)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _saved(ckpt_dir):
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(d) for d in os.listdir(ckpt_dir)
                  if d.isdigit() and os.path.exists(os.path.join(ckpt_dir, d, "commit_success.txt")))


def _logged(path):
    return [(r["step"], r["loss"]) for r in read_jsonl(path, "train")] if os.path.exists(path) else []


def kill_after_checkpoint(proc, ckpts, logged):
    """``kill -9`` ``proc`` once a checkpoint is committed and at least two later steps are logged (``logged()``:
    ``[(step, value)]`` so far); returns (the step a relaunch resumes from, ``{step: value}`` before the kill)."""
    t0 = time.time()
    while not (_saved(ckpts) and max((s for s, _ in logged()), default=0) >= max(_saved(ckpts)) + 2):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 240, "timed out waiting for the run"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return max(_saved(ckpts)), dict(logged())


def test_kill9_resume_continues_exactly(tmp_path, tiny_vae_dir):
    run_dir, steps = str(tmp_path / "run"), 12
    metrics, ckpts = os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "checkpoints")
    proc = _start(run_dir, tiny_vae_dir, steps, sleep=0.4)
    resumed_from, first = kill_after_checkpoint(proc, ckpts, lambda: _logged(metrics))
    overlap = [s for s in first if s > resumed_from]
    assert len(overlap) >= 2 and resumed_from < steps

    proc = _start(run_dir, tiny_vae_dir, steps, sleep=0)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    rows = _logged(metrics)
    resumed = dict(rows[len(first):])  # what the second process logged
    assert sorted(resumed) == list(range(resumed_from + 1, steps + 1))
    for s in overlap:
        assert resumed[s] == first[s], f"step {s}: resumed {resumed[s]!r} != before the kill {first[s]!r}"


def _vae_params(vae_dir):
    import orbax.checkpoint as ocp

    from core_jax.checkpoint import Checkpointer

    ckpt = Checkpointer(os.path.join(vae_dir, "checkpoints"))
    try:
        step = ckpt.latest_step()
        state = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    finally:
        ckpt.close()
    return step, state["params"]


def test_sigterm_during_vae_pretraining_stops_the_command_and_resumes_it(tmp_path):
    """SIGTERM while the VAE pretrains: exit 143, no UNet training on the half-trained VAE; the next launch
    finishes the VAE (equal to an uninterrupted one) and then trains the UNet."""
    import jax
    import numpy as np

    pretrain, steps = 8, 2
    # the three runs share compiled programs through JAX's persistent cache (the same executables)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    ref_vae = str(tmp_path / "ref_vae")  # the same pretraining, uninterrupted (and no UNet after it)
    proc = subprocess.run([sys.executable, DRIVER, str(tmp_path / "unused"), ref_vae, str(steps), str(pretrain)],
                          cwd=ROOT, env={**env, "VAE_ONLY": "1"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run_dir, vae_dir = str(tmp_path / "run"), str(tmp_path / "vae")
    env["DATA_SLEEP"] = "0.1"
    proc = subprocess.Popen([sys.executable, DRIVER, run_dir, vae_dir, str(steps), str(pretrain)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not _saved(os.path.join(vae_dir, "checkpoints")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 300, "timed out waiting for the VAE's first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-3000:]
    stopped_at = max(_saved(os.path.join(vae_dir, "checkpoints")))
    assert stopped_at < pretrain
    assert not os.path.exists(os.path.join(run_dir, "checkpoints")), "the UNet trained on a half-trained VAE"

    proc = subprocess.run([sys.executable, DRIVER, run_dir, vae_dir, str(steps), str(pretrain)], cwd=ROOT,
                          env={**env, "DATA_SLEEP": "0"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _saved(os.path.join(run_dir, "checkpoints"))[-1] == steps
    (step, got), (ref_step, want) = _vae_params(vae_dir), _vae_params(ref_vae)
    assert step == ref_step == pretrain
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
