"""Map Flax NNX parameters to and from PyTorch-style state dicts (diffusers / transformers key names).

Our modules name their attributes like the PyTorch reference (``down_blocks[0].resnets[1].conv1``), so a
parameter path maps mechanically to a state-dict key: ``kernel`` / ``scale`` / ``embedding`` become
``weight``; a 2-D kernel is transposed ((in, out) <-> (out, in)) and a 4-D conv kernel goes
HWIO <-> OIHW. ``rename`` fixes the few names that differ (our dotted name -> torch key).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import jax
import numpy as np
from flax import nnx

_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


class StateDictMismatch(ValueError):
    """The state dict does not fit the model: lists the missing, unexpected and mis-shaped keys."""

    def __init__(self, what: str, missing=(), unexpected=(), shapes=()):
        self.missing, self.unexpected, self.shapes = list(missing), list(unexpected), list(shapes)
        parts = [f"{what}: state dict does not match the model"]
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        if self.shapes:
            parts.append("wrong shapes: " + ", ".join(f"{k} expected {e} got {g}" for k, e, g in self.shapes))
        super().__init__("; ".join(parts))


def _torch_key(path: tuple) -> str:
    *parents, leaf = (str(p) for p in path)
    return ".".join([*parents, _LEAF.get(leaf, leaf)])


def _to_torch_layout(x: np.ndarray) -> np.ndarray:
    if x.ndim == 2:
        return x.T
    if x.ndim == 4:
        return x.transpose(3, 2, 0, 1)
    return x


def _from_torch_layout(x: np.ndarray, ndim: int) -> np.ndarray:
    if ndim == 2:
        return x.T
    if ndim == 4:
        return x.transpose(2, 3, 1, 0)
    return x


def _torch_shape(shape: tuple) -> tuple:
    if len(shape) == 2:
        return shape[::-1]
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return shape


def _param_entries(module: nnx.Module, rename: Callable[[str], str] | None):
    """Yield (torch key, path, value, is_kernel) for every nnx.Param of the module."""
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        key = _torch_key(path)
        if rename is not None:
            key = rename(key)
        yield key, path, var, str(path[-1]) == "kernel"


def to_state_dict(module: nnx.Module, rename: Callable[[str], str] | None = None) -> dict[str, np.ndarray]:
    """All parameters of ``module`` as a flat torch-layout dict of float32 numpy arrays."""
    out = {}
    for key, _, var, is_kernel in _param_entries(module, rename):
        x = np.asarray(jax.device_get(var[...]), dtype=np.float32)
        out[key] = np.ascontiguousarray(_to_torch_layout(x) if is_kernel else x)
    return out


def load_state_dict(
    module: nnx.Module,
    state_dict: Mapping[str, np.ndarray],
    *,
    what: str = "model",
    rename: Callable[[str], str] | None = None,
    ignore: Iterable[str] = (),
) -> nnx.Module:
    """Copy a torch-layout state dict into ``module`` in place (and return it).

    Every parameter must be present with the right shape and every key must be used, except keys that
    match one of the ``ignore`` regular expressions (buffers such as ``position_ids``); otherwise a
    :class:`StateDictMismatch` lists all the offending keys at once.
    """
    patterns = [re.compile(p) for p in ignore]
    remaining = {k for k in state_dict if not any(p.fullmatch(k) for p in patterns)}
    missing, shapes, updates = [], [], []
    for key, path, var, is_kernel in _param_entries(module, rename):
        if key not in state_dict:
            missing.append(key)
            continue
        remaining.discard(key)
        x = np.asarray(state_dict[key])
        expected = tuple(var.shape)
        if is_kernel:
            x = _from_torch_layout(x, len(expected)) if x.ndim == len(expected) else x
        if tuple(x.shape) != expected:
            torch_shape = _torch_shape(expected) if is_kernel else expected
            shapes.append((key, torch_shape, tuple(np.asarray(state_dict[key]).shape)))
            continue
        updates.append((var, x.astype(var.dtype)))
    if missing or remaining or shapes:
        raise StateDictMismatch(what, sorted(missing), sorted(remaining), shapes)
    for var, x in updates:  # also fills an abstract module made with nnx.eval_shape
        var.set_value(jax.numpy.asarray(x))
    return module


def empty_module(build: Callable[[], nnx.Module]) -> nnx.Module:
    """Build a module with zero-filled variables without running its (slow, eager) random initialisers;
    :func:`load_state_dict` then fills the parameters."""
    graphdef, state = nnx.split(nnx.eval_shape(build))
    state = jax.jit(lambda: jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), state))()
    return nnx.merge(graphdef, state)
