import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "tests", "core", "toy_driver.py")


def run_driver(*args, devices=1, env=None, check=True, timeout=300, launcher=None):
    """Run tests/core/toy_driver.py in a fresh process with `devices` simulated CPU devices."""
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    e = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, **(env or {})}
    if launcher:  # several processes: no shared compilation cache (tests/conftest.py)
        e.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [*(launcher or []), sys.executable, DRIVER, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def result(proc) -> dict:
    lines = [l for l in proc.stdout.splitlines() if "RESULT " in l]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(lines[-1].split("RESULT ", 1)[1])


class _Driver:
    run = staticmethod(run_driver)
    result = staticmethod(result)


@pytest.fixture
def driver():
    """Runs tests/core/toy_driver.py in subprocesses (driver.run) and parses its RESULT line (driver.result)."""
    return _Driver


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """One toy dataset folder shared by every test."""
    return str(tmp_path_factory.mktemp("toy_data"))
