"""Two processes (launch/local.sh 2, 2 CPU devices each) as one JAX cluster, end to end: recsys training
(length-grouped batches) with evaluation, best_metric, early stopping and checkpoints; the best checkpoint
restored and evaluated on the 2-process mesh; a tiny random canvas Pipeline sampled on the 2-process mesh
(driver: multiprocess_driver.py)."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core_jax.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A tiny random SD pipeline folder (the canvas tests' builder)."""
    pytest.importorskip("diffusers")
    spec = importlib.util.spec_from_file_location("canvas_test_fixtures", os.path.join(ROOT, "tests", "canvas",
                                                                                        "conftest.py"))
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    return fixtures.build_tiny_sd(tmp_path_factory.mktemp("mp_pipelines") / "tiny_sd")


def test_train_evaluate_and_sample_on_two_processes(tmp_path, tiny_sd):
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    # no shared compilation cache across the cluster's processes (tests/conftest.py)
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_COMPILATION_CACHE_DIR"):
        env.pop(name, None)
    proc = subprocess.run([os.path.join(ROOT, "launch", "local.sh"), "2", "--", sys.executable,
                           os.path.join(ROOT, "tests", "multiprocess_driver.py"), str(tmp_path), str(tiny_sd)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    [line] = [l for l in proc.stdout.splitlines() if l.startswith("[0] RESULT ")]
    result = json.loads(line.split("RESULT ", 1)[1])
    assert result["processes"] == 2 and result["devices"] == 4
    # length-grouped training batches: two batch lengths, so two compiled train steps, on both processes
    assert "train step program 2 (batch shapes [16, " in proc.stdout, proc.stdout[-3000:]

    # early stopping on a run that cannot improve (learning rate 0): best at the first eval, stop 2 evals later
    run_dir = os.path.join(tmp_path, "recsys_run")
    best = json.load(open(os.path.join(run_dir, "best.json")))
    assert best["step"] == 2 and result["stopped_at"] == 6
    assert sorted(os.listdir(os.path.join(run_dir, "best"))) == ["2"]
    # the best checkpoint, restored and evaluated on both processes, gives the metrics logged in training
    logged = {r["step"]: r for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"), "eval")}
    assert result["best_step"] == 2
    for k, v in result["restored_eval"].items():
        np.testing.assert_allclose(v, logged[2][k], rtol=1e-5, err_msg=k)

    # the pipeline sharded its batch over all 4 devices of both processes, and returned every image
    assert result["pipeline_mesh"]["data"] == 4
    import canvas_jax

    single = canvas_jax.Pipeline.from_pretrained(tiny_sd, mesh=None)
    want = single(["a photo of a cat", "a red dog", "hello world"], num_steps=2, guidance_scale=3.0,
                  output_type="np", seed=1).images
    np.testing.assert_allclose(np.load(os.path.join(tmp_path, "images.npy")), want, atol=1e-5)
