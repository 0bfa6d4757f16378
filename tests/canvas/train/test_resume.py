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


def _start(run_dir, vae_dir, steps, sleep):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "STEP_SLEEP": str(sleep),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.Popen([sys.executable, DRIVER, run_dir, vae_dir, str(steps)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _saved(ckpt_dir):
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(d) for d in os.listdir(ckpt_dir)
                  if d.isdigit() and os.path.exists(os.path.join(ckpt_dir, d, "commit_success.txt")))


def _logged(path):
    return [(r["step"], r["loss"]) for r in read_jsonl(path, "train")] if os.path.exists(path) else []


def test_kill9_resume_continues_exactly(tmp_path, tiny_vae_dir):
    run_dir, steps = str(tmp_path / "run"), 12
    metrics, ckpts = os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "checkpoints")
    proc = _start(run_dir, tiny_vae_dir, steps, sleep=0.4)
    t0 = time.time()
    # kill once a checkpoint is committed and at least two later steps are logged
    while not (_saved(ckpts) and max(s for s, _ in _logged(metrics) or [(0, 0)]) >= max(_saved(ckpts)) + 2):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 240, "timed out waiting for the run"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = max(_saved(ckpts))
    first = dict(_logged(metrics))
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
