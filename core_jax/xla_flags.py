"""XLA:CPU defaults that core_jax adds to ``XLA_FLAGS`` when it is imported, before JAX starts a backend.

``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``: jaxlib 0.10 hands every convolution to
YNNPACK, whose weight gradient of a 3x3 convolution is 4-10x slower than its forward pass and runs on one
thread (batch 32, 32x32, 64->64 channels: forward + both gradients 324-616 ms of CPU time, against 73-95 ms
with XLA's own Eigen convolutions; the shapes_tiny VAE training step 2,569 -> 1,599 ms of CPU, the UNet step
994 -> 852 ms; BENCHMARKS.md, "canvas_jax: training speed"). Dots, reductions and elementwise fusions stay
with YNNPACK.

A flag the user already set in ``XLA_FLAGS`` (any value) is left alone, and ``CORE_JAX_XLA_DEFAULTS=0`` adds
nothing. Flags only act before the backend starts: importing core_jax after the first JAX computation logs a
warning instead. They are XLA:CPU options; GPU and TPU backends ignore them.
"""

from __future__ import annotations

import logging
import os

DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}


def apply(environ=os.environ) -> list[str]:
    """Append the defaults the user has not set to ``environ["XLA_FLAGS"]``; returns the flags added."""
    if environ.get("CORE_JAX_XLA_DEFAULTS", "1") == "0":
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [f"--{name}={value}" for name, value in DEFAULTS.items() if f"--{name}=" not in current]
    if not added:
        return []
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        logging.getLogger(__name__).warning(
            "core_jax was imported after JAX started its backend, so %s is not applied (CPU convolution "
            "gradients stay ~4x slower); import core_jax first or set it in XLA_FLAGS", " ".join(added))
        return []
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
