"""With several devices the batch is sharded over the mesh's data axis (and padded): same images as one device."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import canvas_jax

_XLA_BASE = os.environ.get("XLA_FLAGS", "")  # the session's flags (tests/conftest.py)

pytest.importorskip("diffusers")

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, jax
    import canvas_jax
    assert jax.device_count() == 4, jax.devices()
    pipe = canvas_jax.Pipeline.from_pretrained(sys.argv[1])
    assert pipe.mesh is not None and pipe.mesh.shape["data"] == 4
    latents = np.load(sys.argv[2])
    out = pipe(["a photo of a cat", "an astronaut riding a horse on mars"], latents=latents, num_steps=10,
               guidance_scale=5.0, sampler="ddim", output_type="np").images  # 2 rows padded to 4
    np.save(sys.argv[3], out)
""")


def test_sharded_batch_equals_single_device(tiny_sd, tmp_path, tiny_latents):
    latents = tiny_latents  # the parity tests' call: the single-device program is already compiled
    np.save(tmp_path / "latents.npy", latents)
    env = {**os.environ, "XLA_FLAGS": _XLA_BASE + " --xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_sd), str(tmp_path / "latents.npy"),
                           str(tmp_path / "out.npy")], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = np.load(tmp_path / "out.npy")
    single = canvas_jax.Pipeline.from_pretrained(tiny_sd, mesh=None)
    expected = single(["a photo of a cat", "an astronaut riding a horse on mars"], latents=latents,
                      num_steps=10, guidance_scale=5.0, sampler="ddim", output_type="np").images
    assert sharded.shape == expected.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(sharded, expected, atol=1e-5)
