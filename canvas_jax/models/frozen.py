"""Frozen sub-models inside a trained module: their weights are ``Frozen`` variables, not ``nnx.Param``.

The shared loop differentiates and optimises only ``nnx.Param``; everything else in the model (here the
frozen VAE and text encoder) travels in the state's ``rest``: sharded by the same logical axis names,
checkpointed with the run (so a run folder is self-contained), never updated.
"""

from __future__ import annotations

from flax import nnx


class Frozen(nnx.Variable):
    """A pretrained weight that is used but not trained."""


def freeze(module: nnx.Module) -> nnx.Module:
    """Turn every ``nnx.Param`` of ``module`` into a :class:`Frozen` variable in place (metadata kept)."""
    for path, node in list(nnx.iter_graph(module)):
        if not isinstance(node, nnx.Param):
            continue
        parent = module
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        frozen = Frozen(node[...], **{k: v for k, v in node.get_metadata().items() if k == "out_sharding"})
        if isinstance(path[-1], int):
            parent[path[-1]] = frozen
        else:
            setattr(parent, path[-1], frozen)
    return module


def unfreeze(module: nnx.Module) -> nnx.Module:
    """The inverse of :func:`freeze` (for saving a frozen part with tools that read ``nnx.Param``)."""
    for path, node in list(nnx.iter_graph(module)):
        if not isinstance(node, Frozen):
            continue
        parent = module
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        param = nnx.Param(node[...], **{k: v for k, v in node.get_metadata().items() if k == "out_sharding"})
        if isinstance(path[-1], int):
            parent[path[-1]] = param
        else:
            setattr(parent, path[-1], param)
    return module


def copy_module(module: nnx.Module) -> nnx.Module:
    """A new module object sharing ``module``'s (immutable) arrays."""
    return nnx.merge(*nnx.split(module))
