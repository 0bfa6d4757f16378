"""The small interface a model package implements to train on the shared loop (core_jax.loop)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

import jax
from flax import nnx

Batch = Mapping[str, Any]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class DataContext:
    """What a task needs to build this process's data: its shard and its share of the global batch."""

    seed: int
    batch_size: int  # per process (global batch / process count)
    process_index: int
    process_count: int


class Task(Protocol):
    """A model package supplies these; the loop does everything else.

    ``loss`` and ``eval_step`` are traced under ``jit``: pure functions of their arguments. ``loss``
    may update non-parameter state of the model (e.g. batch statistics): the loop keeps it.

    Optional attribute ``trainable``: an nnx filter choosing what the optimizer updates (default
    ``nnx.Param``); the rest of the model (a frozen text encoder, the base weights under LoRA) is kept
    unchanged, sharded and checkpointed.
    """

    def create_model(self, rngs: nnx.Rngs) -> nnx.Module: ...

    def loss(self, model: nnx.Module, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]: ...

    def eval_step(self, model: nnx.Module, batch: Batch) -> Metrics:
        """Per-batch metric means, or per-batch sums plus a ``count`` (the loop then divides by the total)."""
        ...

    def train_data(self, ctx: DataContext) -> Iterator[Batch]:
        """A checkpointable Grain iterator (``get_state``/``set_state``) of per-process numpy batches. An
        iterator with ``observe(trainer, state)`` (on-policy data: RL rollouts sampled from the policy) is
        shown the current train state before every ``next``."""
        ...

    def eval_data(self, ctx: DataContext) -> Iterable[Batch] | None: ...
