"""launch/local.sh 2 -- ...: two processes train on a global batch and write periodic and best checkpoints
(saved at the same steps), the last of which a single process then restores into a different mesh with equal
values."""

import json
import os

import numpy as np

from core_jax.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_two_processes_then_restore_on_another_mesh(tmp_path, toy_data, driver):
    run = str(tmp_path / "run")
    common = [f"train.run_dir={run}", f"data.dir={toy_data}", "train.steps=12", "train.log_every=4",
              "train.eval_every=0", "train.checkpoint.every=0", "train.batch_size=16"]
    # 2 processes x 2 devices: mesh data=2 (across processes) x fsdp=2. The periodic and the best
    # checkpoint save the same steps at once (their cross-process barriers must not collide).
    proc = driver.run("train", *common, "mesh.data=-1", "mesh.fsdp=2", "train.eval_every=4",
                      "train.checkpoint.every=4", "train.best_metric=mse", "train.best_mode=min", devices=2,
                      launcher=[os.path.join(ROOT, "launch", "local.sh"), "2", "--"])
    assert "[1] " in proc.stdout + proc.stderr  # the second process really ran
    assert sorted(os.listdir(os.path.join(run, "checkpoints")), key=int) == ["8", "12"]  # keep: 2
    best = json.load(open(os.path.join(run, "best.json")))
    assert os.listdir(os.path.join(run, "best")) == [str(best["step"])]
    logged = read_jsonl(os.path.join(run, "metrics.jsonl"), "eval")[-1]
    # one process, 8 devices, a different mesh (and one device): same step, same values
    restored = [driver.result(driver.run("restore", *common, f"mesh.data={d}", f"mesh.fsdp={f}",
                                         f"mesh.tensor={t}", devices=n))
                for n, d, f, t in [(8, 2, 2, 2), (1, 1, 1, 1)]]
    for r in restored:
        assert r["step"] == 12
        np.testing.assert_allclose(r["eval"]["mse"], logged["mse"], rtol=1e-6)
    assert restored[0]["devices"] == 8 and "P('fsdp', 'tensor')" in restored[0]["specs"]
    np.testing.assert_allclose(restored[0]["fingerprint"], restored[1]["fingerprint"], rtol=1e-7)


LOCAL = [os.path.join(ROOT, "launch", "local.sh"), "2", "--"]


def test_two_checkpointers_save_the_same_steps_at_once(tmp_path, driver):
    """Orbax names its cross-process barriers by step: without a per-folder prefix, the periodic and the best
    checkpoint of one step collide ("barrier already ongoing") and the processes hang."""
    proc = driver.run("two_checkpointers", str(tmp_path), devices=1, launcher=LOCAL, timeout=150)
    assert driver.result(proc) == {"periodic": 6, "best": 6}
    assert "already ongoing" not in proc.stderr


def test_one_failing_process_stops_the_cluster(tmp_path, driver):
    """An error on one process exits it at once (not into JAX's shutdown barrier, where it would wait for a
    process that waits for it), so the launcher sees the failure and stops the other."""
    proc = driver.run("fail", str(tmp_path), devices=1, launcher=LOCAL, env={"LOCAL_STOP_GRACE_S": "5"},
                      check=False, timeout=150)
    assert proc.returncode != 0
    assert "process 0 fails alone" in proc.stderr
