"""core_jax: the shared runtime (config, distributed init, mesh and sharding, checkpointing, data, train loop).

Importing core_jax turns off Flax's eager variable sharding: models annotate parameters with *logical*
axis names (``nnx.with_partitioning(init, ("embed", "mlp"))``) and core_jax maps them to mesh axes
with the rules table of the run's config when it creates the state under ``jit``. It also makes
``getattr(tracer, "sharding", None)`` cheap (:mod:`core_jax.jax_patches`), which makes model builds under a trace
linear instead of quadratic, and adds core_jax's XLA:CPU defaults to ``XLA_FLAGS`` (:mod:`core_jax.xla_flags`:
convolution gradients 4x faster on CPU) unless the user set them or JAX has already started.
"""

import flax

from core_jax import jax_patches, xla_flags

flax.config.update("flax_always_shard_variable", False)
xla_flags.apply()  # before any backend starts
jax_patches.apply()  # tracer.sharding without the quadratic origin walk (see core_jax/jax_patches.py)

__version__ = "0.1.0"
