"""Device mesh from config, logical-axis sharding rules, and global batches from per-process data."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from core_jax.config import ConfigError

AXES = ("data", "fsdp", "tensor")

# logical axis name -> mesh axis (or axes, or None = replicated)
DEFAULT_RULES: list[tuple[str, str | list[str] | None]] = [
    ("batch", ["data", "fsdp"]),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("items", ["fsdp", "tensor"]),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("norm", None),
]


@dataclasses.dataclass
class MeshConfig:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: list[tuple[str, str | list[str] | None]] = dataclasses.field(
        default_factory=lambda: [tuple(r) for r in DEFAULT_RULES]
    )


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all (or the given) devices with axes (data, fsdp, tensor); one size may be -1."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sizes.count(-1) > 1:
        raise ConfigError(f"mesh: at most one axis may be -1, got data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ConfigError(f"mesh: {len(devices)} devices are not divisible by the fixed axis sizes ({known})")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ConfigError(
            f"mesh: data*fsdp*tensor = {math.prod(sizes)} but there are {len(devices)} devices "
            f"(data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]}; use -1 to fill)"
        )
    dev = np.asarray(devices).reshape(sizes)
    return Mesh(dev, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh, rules) -> P:
    """Map logical axis names to a PartitionSpec; a dim whose size the mesh axes don't divide stays replicated."""
    if not names:
        return P()
    table = {k: v for k, v in rules}
    used: set[str] = set()
    out = []
    for name, size in zip(names, shape):
        target = table.get(name) if name is not None else None
        axes = [target] if isinstance(target, str) else list(target or [])
        axes = [a for a in axes if a not in used and mesh.shape[a] > 1]
        n = math.prod(mesh.shape[a] for a in axes)
        if not axes or size % n:
            out.append(None)
            continue
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else tuple(axes))
    return P(*out)


def state_specs(state: nnx.State, mesh: Mesh, rules) -> nnx.State:
    """PartitionSpecs for an (abstract) nnx.State from the logical names its Variables carry."""

    def spec(var):
        if isinstance(var, nnx.Variable):
            names = var.get_metadata().get("out_sharding")
            return var.replace(logical_to_spec(names, var.shape, mesh, rules))
        return logical_to_spec(None, getattr(var, "shape", ()), mesh, rules)

    return jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def named(mesh: Mesh, specs):
    """PartitionSpec tree -> NamedSharding tree."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_spec(ndim: int = 1) -> P:
    return P(("data", "fsdp"), *([None] * (ndim - 1)))


def global_batch(local_batch, mesh: Mesh):
    """Assemble per-process numpy batches (leading dim = this process's share) into global jax.Arrays."""

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(NamedSharding(mesh, batch_spec(x.ndim)), x)

    return jax.tree.map(put, local_batch)


def batch_divisor(mesh: Mesh) -> int:
    """The global batch must be a multiple of this (the devices the batch dim is split over)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]
