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


def apply() -> bool:
    """Replace ``Tracer.sharding`` if it is still JAX's raising property; True when patched."""
    prop = _core.Tracer.__dict__.get("sharding")
    if not isinstance(prop, property) or prop.fget is _sharding:
        return prop is not None and getattr(prop, "fget", None) is _sharding
    _core.Tracer.sharding = property(_sharding, doc=prop.__doc__)
    return True
