"""core_jax: the shared runtime (config, distributed init, mesh and sharding, checkpointing, data, train loop).

Importing core_jax turns off Flax's eager variable sharding: models annotate parameters with *logical*
axis names (``nnx.with_partitioning(init, ("embed", "mlp"))``) and core_jax maps them to mesh axes
with the rules table of the run's config when it creates the state under ``jit``. It also makes
``getattr(tracer, "sharding", None)`` cheap (:mod:`core_jax.jax_patches`), which makes model builds under a trace
linear instead of quadratic.
"""

import flax

from core_jax import jax_patches

flax.config.update("flax_always_shard_variable", False)
jax_patches.apply()  # tracer.sharding without the quadratic origin walk (see core_jax/jax_patches.py)

__version__ = "0.1.0"
