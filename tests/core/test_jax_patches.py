"""core_jax.jax_patches: building a model under a trace no longer walks the jaxpr for every key drawn."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax._src.interpreters import partial_eval as pe

import core_jax  # noqa: F401  (applies the patch)


def test_tracer_sharding_is_still_an_attribute_error():
    @jax.jit
    def f(x):
        assert getattr(x, "sharding", None) is None and not hasattr(x, "sharding")
        with pytest.raises(AttributeError, match="'sharding' attribute is not available on traced array"):
            x.sharding  # noqa: B018
        return x + 1

    assert int(f(jnp.int32(1))) == 2


def test_model_build_under_eval_shape_does_not_walk_the_trace(monkeypatch):
    calls = []
    original = pe.DynamicJaxprTracer._origin_msg
    monkeypatch.setattr(pe.DynamicJaxprTracer, "_origin_msg", lambda self: calls.append(1) or original(self))
    model = nnx.eval_shape(lambda: nnx.Sequential(*[nnx.Linear(4, 4, rngs=nnx.Rngs(0)) for _ in range(3)]))
    assert model.layers[0].kernel.shape == (4, 4)
    assert calls == []
