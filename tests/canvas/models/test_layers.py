"""The shared layers against direct reference computations (numpy / torch)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import canvas_jax  # noqa: F401
from canvas_jax.models import layers
from canvas_jax.models.layers import nearest_resize, timestep_embedding

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dim,flip,shift", [(32, True, 0), (33, False, 1)])
def test_timestep_embedding_matches_diffusers(dim, flip, shift):
    from diffusers.models.embeddings import get_timestep_embedding

    t = np.array([0.0, 1.0, 17.5, 999.0], np.float32)
    want = get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift).numpy()
    got = timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=flip, freq_shift=shift)
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("size,out", [((3, 5), (5, 9)), ((4, 4), (8, 8)), ((5, 3), (10, 7))])
def test_nearest_resize_matches_torch(size, out):
    x = np.random.default_rng(0).standard_normal((1, 2, *size)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=out, mode="nearest").numpy()
    got = nearest_resize(jnp.asarray(x.transpose(0, 2, 3, 1)), out)
    np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2), want)


@pytest.mark.parametrize("shape,groups", [((2, 5, 6, 8), 4), ((3, 7, 16), 16), ((2, 4, 4, 6), 1)])
def test_group_norm_matches_torch_forward_and_gradients(shape, groups):
    """Our per-channel-then-per-group statistics give torch.nn.functional.group_norm's values and gradients."""
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, shape).astype(np.float32)  # an offset mean: a one-pass variance would drift
    scale, bias, dy = rng.normal(size=shape[-1]), rng.normal(size=shape[-1]), rng.normal(size=shape)
    norm = layers.group_norm(shape[-1], groups, 1e-6, rngs=nnx.Rngs(0))
    norm.scale[...], norm.bias[...] = jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)

    def loss(m, x):
        return jnp.sum(m(x) * dy)

    (gm, gx), out = nnx.grad(loss, argnums=(0, 1))(norm, jnp.asarray(x)), norm(jnp.asarray(x))
    tx = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
    ts, tb = (torch.tensor(v, dtype=torch.float32, requires_grad=True) for v in (scale, bias))
    ref = torch.nn.functional.group_norm(tx, groups, ts, tb, eps=1e-6)
    (ref * torch.tensor(np.moveaxis(dy, -1, 1), dtype=torch.float32)).sum().backward()
    np.testing.assert_allclose(np.asarray(out), np.moveaxis(ref.detach().numpy(), 1, -1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(gx), np.moveaxis(tx.grad.numpy(), 1, -1), atol=1e-4)
    np.testing.assert_allclose(np.asarray(gm.scale[...]), ts.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(gm.bias[...]), tb.grad.numpy(), atol=1e-4)
