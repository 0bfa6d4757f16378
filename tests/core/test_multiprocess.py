"""launch/local.sh 2 -- ...: two processes train on a global batch and write one checkpoint, which a
single process then restores into a different mesh with equal values."""

import os

import numpy as np

from core_jax.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_two_processes_then_restore_on_another_mesh(tmp_path, toy_data, driver):
    run = str(tmp_path / "run")
    common = [f"train.run_dir={run}", f"data.dir={toy_data}", "train.steps=12", "train.log_every=4",
              "train.eval_every=0", "train.checkpoint.every=0", "train.batch_size=16"]
    # 2 processes x 2 devices: mesh data=2 (across processes) x fsdp=2
    proc = driver.run("train", *common, "mesh.data=-1", "mesh.fsdp=2", devices=2,
                      launcher=[os.path.join(ROOT, "launch", "local.sh"), "2", "--"])
    assert "[1] " in proc.stdout + proc.stderr  # the second process really ran
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["12"]
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
