import pytest

from core_jax.distributed import ClusterSpec, first_slurm_host, resolve


def test_single_process_when_nothing_is_set():
    assert resolve(env={}) is None


def test_flags_win_over_environment():
    spec = resolve("10.0.0.1:1234", 4, 2, env={"JAX_COORDINATOR_ADDRESS": "x:1", "JAX_NUM_PROCESSES": "9",
                                                "JAX_PROCESS_ID": "0"})
    assert spec == ClusterSpec("10.0.0.1:1234", 4, 2, "flags")


def test_partial_flags_are_an_error():
    with pytest.raises(ValueError, match="give all of"):
        resolve("host:1", None, None, env={})


def test_jax_environment_variables():
    spec = resolve(env={"JAX_COORDINATOR_ADDRESS": "127.0.0.1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
    assert spec == ClusterSpec("127.0.0.1:12355", 2, 1, "env")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        resolve(env={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})


@pytest.mark.parametrize("nodelist, first", [
    ("gpu[003-005,9]", "gpu003"), ("node7", "node7"), ("a[1,4],b2", "a1"), ("host-[10-12]", "host-10")])
def test_slurm_node_lists(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_slurm():
    env = {"SLURM_JOB_NODELIST": "gpu[003-004]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "JAX_COORDINATOR_PORT": "5000"}
    assert resolve(env=env) == ClusterSpec("gpu003:5000", 2, 1, "slurm")
    assert resolve(env={**env, "SLURM_NTASKS": "1"}) is None


def test_kubernetes_indexed_job():
    env = {"JOB_COMPLETION_INDEX": "3", "NUM_PROCESSES": "4", "JOB_NAME": "train", "SERVICE_NAME": "train-svc"}
    assert resolve(env=env) == ClusterSpec("train-0.train-svc:12355", 4, 3, "kubernetes")
    assert resolve(env={**env, "COORDINATOR_ADDRESS": "coord:99"}).coordinator_address == "coord:99"
    with pytest.raises(ValueError, match="SERVICE_NAME"):
        resolve(env={"JOB_COMPLETION_INDEX": "0", "NUM_PROCESSES": "2", "JOB_NAME": "j"})
