"""One workaround for a JAX performance trap, applied when core_jax is imported.

``getattr(tracer, "sharding", None)`` on a tracer raises (and catches) an AttributeError whose message JAX
builds with the tracer's origin: a walk back over every equation traced so far. Flax does exactly that each
time an ``nnx.Rngs`` stream draws a key under a trace (``Variable.set_value`` compares shardings), so building a
model under ``jit`` / ``nnx.eval_shape`` is quadratic in its number of parameters: ~13 s of an 80 s tiny-UNet
training test, and more for full-size models. The patch raises the same AttributeError (same class, same
first sentence) without the origin walk, so ``hasattr``/``getattr`` behave exactly as before.
"""

from __future__ import annotations

from jax._src import core as _core


def _sharding(self):
    raise AttributeError(f"The 'sharding' attribute is not available on {self._error_repr()}.")


def apply() -> None:
    """Replace ``Tracer.sharding`` while it is JAX's raising property (idempotent)."""
    prop = _core.Tracer.__dict__.get("sharding")
    if isinstance(prop, property) and prop.fget is not _sharding:
        _core.Tracer.sharding = property(_sharding, doc=prop.__doc__)
