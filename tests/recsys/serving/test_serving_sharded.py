"""ItemIndex on 8 simulated devices and on a 2-process cluster equals brute force (subprocesses)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serving_mesh_driver.py")


def _run(meshes, devices, launcher=(), env=None):
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    env = {**os.environ, **(env or {}), "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    if launcher:  # several processes: no shared compilation cache (tests/conftest.py)
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run([*launcher, sys.executable, DRIVER, *meshes], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = [line for line in proc.stdout.splitlines() if "RESULT " in line]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(lines[-1].split("RESULT ", 1)[1]), proc


def test_eight_simulated_devices():
    res, _ = _run(["1,8,1:float32+int8", "2,2,2"], devices=8)
    assert res["devices"] == 8
    assert res["1,8,1:float32+int8"] == {"checks": 4, "shards": 8, "ivf_exact": True}
    assert res["2,2,2"] == {"checks": 2, "shards": 4, "ivf_exact": True}  # items over fsdp x tensor


def test_two_processes():
    res, proc = _run(["1,4,1"], devices=2, launcher=[os.path.join(ROOT, "launch", "local.sh"), "2", "--"])
    assert "[1] " in proc.stdout + proc.stderr  # the second process really ran
    assert res["processes"] == 2 and res["devices"] == 4
    assert res["1,4,1"] == {"checks": 2, "shards": 4, "ivf_exact": True}
