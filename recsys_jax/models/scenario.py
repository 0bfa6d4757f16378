"""Scenario-adaptive user embeddings: one shared trunk, one small tower conditioned on the scenario.

A *scenario* is what a query asks for: a target label (e.g. ``engagement``, ``ad_click``,
``conversion``: see :mod:`recsys_jax.data.event_examples`) and the surface it is shown on (``home``,
``search``, ...). The trunk (HSTU over the event sequence) embeds the history once; the tower maps
that embedding ``h`` to the scenario's user embedding::

    u(h, label, surface) = norm(h + W2 gelu(LN(h) W1 + b1 + e_label[label] + e_surface[surface]) + b2)

Why a conditioned tower and not a scenario token in the sequence: training asks for every label at
every position of a sequence (the next event's labels), so a token would have to be appended after
every position for every label (``L x labels`` extra queries, each attending the whole prefix), and
a serving request for several scenarios would rerun the trunk per scenario. The tower costs one trunk
pass for all scenarios (training and serving) plus a ``D x H`` MLP per scenario asked, and because
label and surface enter as two added embeddings (not one tower per pair), a rare pair (conversions
on a rarely used surface) shares what it learns with the other pairs of its label and surface.
Mixture-of-experts gating by scenario would be the next step up if one tower is too small.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from recsys_jax.models.embeddings import l2_normalize


def _layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=-1, keepdims=True) + eps)


class ScenarioTower(nnx.Module):
    """``tower(user [..., D], label [...], surface [...] | None) -> [..., D]`` (see the module docstring)."""

    def __init__(self, dim: int, hidden: int, num_labels: int, num_surfaces: int, *, normalize: bool,
                 rngs: nnx.Rngs):
        if num_labels < 1 or hidden < 1:
            raise ValueError(f"a scenario tower needs num_labels >= 1 and hidden >= 1, got {num_labels}, {hidden}")
        self.num_labels, self.num_surfaces, self.normalize = num_labels, num_surfaces, normalize
        dense = nnx.with_partitioning(nnx.initializers.xavier_uniform(), ("embed", "mlp"))
        dense_out = nnx.with_partitioning(nnx.initializers.xavier_uniform(), ("mlp", "embed"))
        emb = nnx.with_partitioning(nnx.initializers.normal(1.0), (None, "mlp"))
        zeros = nnx.initializers.zeros_init()
        self.w1 = nnx.Param(dense(rngs.params(), (dim, hidden), jnp.float32))
        self.b1 = nnx.Param(nnx.with_partitioning(zeros, ("mlp",))(rngs.params(), (hidden,), jnp.float32))
        self.w2 = nnx.Param(dense_out(rngs.params(), (hidden, dim), jnp.float32))
        self.b2 = nnx.Param(nnx.with_partitioning(zeros, ("embed",))(rngs.params(), (dim,), jnp.float32))
        self.label = nnx.Param(emb(rngs.params(), (num_labels, hidden), jnp.float32))
        if num_surfaces:
            self.surface = nnx.Param(emb(rngs.params(), (num_surfaces, hidden), jnp.float32))

    def __call__(self, user: jax.Array, label: jax.Array, surface: jax.Array | None = None) -> jax.Array:
        label = jnp.asarray(label, jnp.int32)
        cond = jnp.take(self.label[...], label, axis=0)
        if self.num_surfaces:
            if surface is None:
                raise ValueError("this scenario tower is conditioned on the surface: pass surface codes")
            cond = cond + jnp.take(self.surface[...], jnp.asarray(surface, jnp.int32), axis=0)
        hidden = jax.nn.gelu(_layer_norm(user) @ self.w1[...] + self.b1[...] + cond)
        out = user + hidden @ self.w2[...] + self.b2[...]
        return l2_normalize(out) if self.normalize else out
