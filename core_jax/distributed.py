"""Multi-host initialisation: ``jax.distributed.initialize`` from flags, the environment, SLURM or Kubernetes.

Resolution order: explicit arguments (command-line flags) > ``JAX_COORDINATOR_ADDRESS`` /
``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` > SLURM (``SLURM_JOB_NODELIST``, ``SLURM_NTASKS``,
``SLURM_PROCID``) > a Kubernetes indexed Job / JobSet (``JOB_COMPLETION_INDEX`` with
``COORDINATOR_ADDRESS`` or the first pod's stable host name under the headless service) > single process.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import jax

DEFAULT_PORT = 12355


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    coordinator_address: str
    num_processes: int
    process_id: int
    source: str


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[003-005,9],cpu1`` -> ``gpu003``."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _with_port(host: str, env: Mapping[str, str]) -> str:
    return host if ":" in host else f"{host}:{env.get('JAX_COORDINATOR_PORT', DEFAULT_PORT)}"


def resolve(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> ClusterSpec | None:
    """Where this process sits in the cluster, or None for a single-process run."""
    env = os.environ if env is None else env
    if coordinator_address or num_processes is not None or process_id is not None:
        if not (coordinator_address and num_processes is not None and process_id is not None):
            raise ValueError("distributed flags: give all of coordinator_address, num_processes and process_id")
        return ClusterSpec(_with_port(coordinator_address, env), int(num_processes), int(process_id), "flags")
    if "JAX_COORDINATOR_ADDRESS" in env:
        try:
            n, i = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
        except KeyError as e:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {e.args[0]} is not") from None
        return ClusterSpec(_with_port(env["JAX_COORDINATOR_ADDRESS"], env), n, i, "env")
    if "SLURM_JOB_NODELIST" in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        host = first_slurm_host(env["SLURM_JOB_NODELIST"])
        return ClusterSpec(_with_port(host, env), int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"]), "slurm")
    if "JOB_COMPLETION_INDEX" in env and int(env.get("NUM_PROCESSES", "1")) > 1:
        if "COORDINATOR_ADDRESS" in env:
            host = env["COORDINATOR_ADDRESS"]
        else:  # pod 0 of the indexed Job: <job>-0.<headless service>
            try:
                host = f"{env['JOB_NAME']}-0.{env['SERVICE_NAME']}"
            except KeyError as e:
                raise ValueError(f"Kubernetes: set COORDINATOR_ADDRESS or JOB_NAME and SERVICE_NAME ({e.args[0]} missing)") from None
        return ClusterSpec(_with_port(host, env), int(env["NUM_PROCESSES"]), int(env["JOB_COMPLETION_INDEX"]), "kubernetes")
    return None


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> ClusterSpec | None:
    """Call ``jax.distributed.initialize`` when a cluster is configured; a no-op for a single process."""
    spec = resolve(coordinator_address, num_processes, process_id)
    if spec is None or spec.num_processes <= 1:
        return spec
    jax.distributed.initialize(spec.coordinator_address, spec.num_processes, spec.process_id)
    return spec


def add_flags(parser) -> None:
    """The distributed flags every CLI accepts."""
    g = parser.add_argument_group("distributed")
    g.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)


def initialize_from_args(args) -> ClusterSpec | None:
    return initialize(args.coordinator_address, args.num_processes, args.process_id)
