"""Distributed initialisation: our flags and JAX_* variables override; JAX's own cluster detection does the
rest (tested end to end with two processes under a simulated SLURM step)."""

import os
import socket
import subprocess
import sys

import pytest

from core_jax import distributed
from core_jax.distributed import ClusterSpec, resolve

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[003-004]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
         "SLURM_LOCALID": "0", "SLURM_STEP_NUM_NODES": "2"}


def test_single_process_when_nothing_is_set():
    assert resolve(env={}) is None
    assert resolve(env={"JAX_NUM_PROCESSES": "1"}) is None
    assert resolve(env={**SLURM, "SLURM_NTASKS": "1"}) is None  # a one-task step
    assert resolve(env={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None  # a pod that is no indexed Job


def test_flags_win_over_environment():
    spec = resolve("10.0.0.1:1234", 4, 2, env={"JAX_COORDINATOR_ADDRESS": "x:1", "JAX_NUM_PROCESSES": "9",
                                                "JAX_PROCESS_ID": "0"})
    assert spec == ClusterSpec("10.0.0.1:1234", 4, 2)


def test_partial_settings_without_a_launcher_are_an_error():
    with pytest.raises(ValueError, match="number of processes, process id is not set"):
        resolve("host:1", None, None, env={})
    with pytest.raises(ValueError, match="process id is not set"):
        resolve(env={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='x'"):
        resolve(env={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "x"})


def test_jax_environment_variables():
    spec = resolve(env={"JAX_COORDINATOR_ADDRESS": "127.0.0.1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
    assert spec == ClusterSpec("127.0.0.1:12355", 2, 1)


def test_kubernetes_indexed_job_pod_index_is_the_process_id():
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "3",
           "JAX_COORDINATOR_ADDRESS": "train-workers-0-0.train:12355", "JAX_NUM_PROCESSES": "4"}
    assert resolve(env=env) == ClusterSpec("train-workers-0-0.train:12355", 4, 3, "kubernetes")
    if distributed.importlib.util.find_spec("kubernetes") is None:
        with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES"):
            resolve(env={"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "0"})


def test_slurm_is_left_to_jax_with_overrides_on_top():
    assert resolve(env=SLURM) == ClusterSpec(None, None, None, "slurm")
    assert resolve(env={**SLURM, "JAX_COORDINATOR_ADDRESS": "10.1.1.1:99"}) == \
        ClusterSpec("10.1.1.1:99", None, None, "slurm")
    # one task per node with 8 GPUs: every GPU of the node (JAX alone would give the task GPU SLURM_LOCALID)
    assert resolve(env={**SLURM, "SLURM_GPUS_ON_NODE": "8"}).local_device_ids == tuple(range(8))
    assert resolve(env={**SLURM, "SLURM_NTASKS": "4", "SLURM_GPUS_ON_NODE": "8"}).local_device_ids is None


def test_initialize_hands_the_undetermined_fields_to_jax(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(os, "environ", {**SLURM, "JAX_COORDINATOR_PORT": "5000"})
    assert distributed.initialize(process_id=1).launcher == "slurm"
    assert calls == [((None, None, 1), {"local_device_ids": None})]
    calls.clear()
    monkeypatch.setattr(os, "environ", {})
    assert distributed.initialize() is None and calls == []


SCRIPT = """
import jax
from core_jax import distributed
spec = distributed.initialize()
print("RESULT", spec.launcher, jax.process_index(), jax.process_count(), flush=True)
"""


def test_two_processes_under_slurm_use_jax_detection(tmp_path):
    """Two local processes with the variables srun sets: JAX's SLURM detection forms the cluster."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM", "JAX_PROCESS"))}
    env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_COORDINATOR_PORT=str(port), SLURM_JOB_ID="7",
               SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2", SLURM_STEP_NUM_NODES="1")
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], env={**env, "SLURM_PROCID": str(i),
                                                                   "SLURM_LOCALID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = sorted(line.split()[1:] for out, _ in outs for line in out.splitlines() if line.startswith("RESULT"))
    assert results == [["slurm", "0", "2"], ["slurm", "1", "2"]]
