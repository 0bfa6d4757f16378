"""core_jax's XLA:CPU defaults: convolutions leave YNNPACK (whose weight gradients are slow) unless the user says."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import jax

from core_jax import xla_flags

FLAG = "--xla_cpu_experimental_ynn_fusion_type"

_PROBE = """
import core_jax, jax, jax.numpy as jnp
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
grad = jax.jit(jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1)))
text = grad.lower(jnp.ones((4, 16, 16, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
print("ynn" if "__ynn_fusion" in text else "eigen")
"""


def _probe(**env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "CORE_JAX_XLA_DEFAULTS")}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**base, "JAX_PLATFORMS": "cpu", **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_convolutions_leave_ynnpack_when_core_jax_is_imported_first():
    assert _probe() == "eigen"
    assert _probe(CORE_JAX_XLA_DEFAULTS="0") == "ynn"  # the opt-out (and proof the probe can tell)
    assert _probe(XLA_FLAGS=f"{FLAG}=individual_convolution") == "ynn"  # the user's own value wins


def test_apply_adds_only_what_the_user_did_not_set(monkeypatch):
    monkeypatch.setattr("jax._src.xla_bridge.backends_are_initialized", lambda: False)
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_flags.apply(env) == [f"{FLAG}=-individual_convolution"]
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {FLAG}=-individual_convolution"
    assert xla_flags.apply(env) == []  # idempotent
    mine = {"XLA_FLAGS": f"{FLAG}="}
    assert xla_flags.apply(mine) == [] and mine["XLA_FLAGS"] == f"{FLAG}="
    assert xla_flags.apply({"CORE_JAX_XLA_DEFAULTS": "0"}) == []


def test_apply_after_the_backend_started_warns_and_changes_nothing(caplog):
    jax.devices()  # this test session's backend is up
    env = {}
    with caplog.at_level(logging.WARNING, logger="core_jax.xla_flags"):
        assert xla_flags.apply(env) == []
    assert env == {} and "import core_jax first" in caplog.text
