"""Evaluation on 8 simulated devices with the item table row-sharded equals unsharded evaluation."""

import json
import os
import subprocess
import sys

import pytest

_XLA_BASE = os.environ.get("XLA_FLAGS", "")  # the session's flags (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_sharded_evaluation_equals_unsharded(tmp_path):
    env = {**os.environ, "XLA_FLAGS": _XLA_BASE + " --xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "sharded_eval_driver.py"),
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
    # 97 items + the padding row = 98 rows, not divisible by fsdp x tensor = 4; the stored parameter
    # is padded to 128 rows, so it is row-sharded anyway, and the model's table has exactly 98 rows
    assert result["table_rows"] == 98 and result["param_rows"] == 128
    assert "fsdp" in result["table_spec"] and "tensor" in result["table_spec"], result["table_spec"]
    sharded, unsharded = result["sharded"], result["unsharded"]
    assert set(sharded) >= {"hr@10", "ndcg@10", "mrr"}
    for key, value in unsharded.items():
        if key in sharded:
            assert sharded[key] == pytest.approx(value, abs=1e-6), key
