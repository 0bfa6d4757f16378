"""Frozen sub-models inside a trained module: their weights are ``Frozen`` variables, not ``nnx.Param``.

The shared loop differentiates and optimises only ``nnx.Param``; everything else in the model (here the
frozen VAE and text encoder) travels in the state's ``rest``: sharded by the same logical axis names,
checkpointed with the run (so a run folder is self-contained), never updated.
"""

from __future__ import annotations

from flax import nnx


class Frozen(nnx.Variable):
    """A pretrained weight that is used but not trained."""


def _swap(module: nnx.Module, old: type, new: type) -> nnx.Module:
    """Replace every ``old`` variable of ``module`` with a ``new`` one holding its value, in place."""
    for path, node in list(nnx.iter_graph(module)):
        if not isinstance(node, old):
            continue
        parent = module
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        var = new(node[...], **{k: v for k, v in node.get_metadata().items() if k == "out_sharding"})
        if isinstance(path[-1], int):
            parent[path[-1]] = var
        else:
            setattr(parent, path[-1], var)
    return module


def freeze(module: nnx.Module) -> nnx.Module:
    """Turn every ``nnx.Param`` of ``module`` into a :class:`Frozen` variable in place (metadata kept)."""
    return _swap(module, nnx.Param, Frozen)


def unfreeze(module: nnx.Module) -> nnx.Module:
    """The inverse of :func:`freeze` (for saving a frozen part with tools that read ``nnx.Param``)."""
    return _swap(module, Frozen, nnx.Param)


def copy_module(module: nnx.Module) -> nnx.Module:
    """A new module object sharing ``module``'s (immutable) arrays."""
    return nnx.merge(*nnx.split(module))
