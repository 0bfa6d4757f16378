"""Multi-host initialisation: ``jax.distributed.initialize``, with JAX's own cluster detection.

JAX finds the coordinator, the process count and this process's id itself under SLURM (``srun``), Open
MPI (``mpirun``) and a Kubernetes indexed Job / JobSet (with the ``kubernetes`` package, ``jax[k8s]``,
and a service account that may read pods). Our overrides, each on its own and in this order:

1. command-line flags ``--coordinator-address``, ``--num-processes``, ``--process-id``;
2. ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` (``launch/local.sh``; any
   launcher), and ``JOB_COMPLETION_INDEX`` as the process id of a Kubernetes indexed Job or JobSet pod;
3. what JAX detects. ``JAX_COORDINATOR_PORT`` sets the port of a detected coordinator.

A single process (nothing set and no multi-process launcher found) does not initialise anything.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Mapping

import jax

DEFAULT_PORT = 12355  # for a coordinator address given without a port


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """What ``jax.distributed.initialize`` gets; ``None`` fields are left to JAX's detection of ``launcher``."""

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    launcher: str | None = None  # "slurm" | "ompi" | "kubernetes": JAX detects the fields left None
    local_device_ids: tuple[int, ...] | None = None


def detect_launcher(env: Mapping[str, str]) -> str | None:
    """The multi-process launcher whose variables JAX's cluster detection reads, or None (also for a
    one-task SLURM step or an ``sbatch`` script outside ``srun``)."""
    if all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")) \
            and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "ompi"
    if "KUBERNETES_SERVICE_HOST" in env and "JOB_COMPLETION_INDEX" in env:
        return "kubernetes"
    return None


def _slurm_local_devices(env: Mapping[str, str]) -> tuple[int, ...] | None:
    """With one task per node, every GPU of the node (JAX would give each task GPU ``SLURM_LOCALID`` only)."""
    nodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "0")) or 0)
    if not nodes or int(env["SLURM_NTASKS"]) != nodes or "JAX_LOCAL_DEVICE_IDS" in env:
        return None
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return tuple(range(int(env["SLURM_GPUS_ON_NODE"])))
    if env.get("CUDA_VISIBLE_DEVICES"):
        return tuple(range(len(env["CUDA_VISIBLE_DEVICES"].split(","))))
    return None


def _with_port(host: str) -> str:
    return host if ":" in host.rsplit("]", 1)[-1] else f"{host}:{DEFAULT_PORT}"


def resolve(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> ClusterSpec | None:
    """Where this process sits in the cluster, or None for a single-process run."""
    env = os.environ if env is None else env
    address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    n = num_processes if num_processes is not None else _int(env, "JAX_NUM_PROCESSES")
    i = process_id if process_id is not None else _int(env, "JAX_PROCESS_ID")
    if i is None and "JOB_COMPLETION_INDEX" in env and (address or n is not None):
        i = _int(env, "JOB_COMPLETION_INDEX")
    launcher = detect_launcher(env)
    if n == 1:
        return None
    if launcher == "kubernetes" and None in (address, n) and importlib.util.find_spec("kubernetes") is None:
        raise ValueError("distributed: a Kubernetes indexed Job pod (JOB_COMPLETION_INDEX is set) without "
                         "JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES: set both in the manifest (the process id "
                         "is JOB_COMPLETION_INDEX), or install jax[k8s] for JAX's own detection")
    if launcher is None:
        given = {"coordinator address": address, "number of processes": n, "process id": i}
        if all(v is None for v in given.values()):
            return None
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(
                f"distributed: the {', '.join(missing)} is not set and no launcher (SLURM, Open MPI, Kubernetes) "
                "was detected to supply it; give all of --coordinator-address, --num-processes, --process-id "
                "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    devices = _slurm_local_devices(env) if launcher == "slurm" else None
    return ClusterSpec(_with_port(address) if address else None, n, i, launcher, devices)


def _int(env: Mapping[str, str], key: str) -> int | None:
    if key not in env:
        return None
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"{key}={env[key]!r}: expected an integer") from None


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> ClusterSpec | None:
    """Call ``jax.distributed.initialize`` when a cluster is configured; a no-op for a single process (and when
    this process has already joined its cluster)."""
    spec = resolve(coordinator_address, num_processes, process_id)
    if spec is None or jax.distributed.is_initialized():
        return spec
    jax.distributed.initialize(spec.coordinator_address, spec.num_processes, spec.process_id,
                               local_device_ids=list(spec.local_device_ids) if spec.local_device_ids else None)
    return spec


def add_flags(parser) -> None:
    """The distributed flags every CLI accepts (each overrides the environment and the detected launcher)."""
    g = parser.add_argument_group("distributed")
    g.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)


def initialize_from_args(args) -> ClusterSpec | None:
    return initialize(args.coordinator_address, args.num_processes, args.process_id)
