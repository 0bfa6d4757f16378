"""Unified multi-label training on an event dataset: the task ``recsys-jax train`` runs with ``unified.enabled``.

One HSTU trunk reads the event sequence (item + action + surface (+ is-ad) tokens, time bias as in
plain HSTU: :mod:`recsys_jax.models.hstu`); a scenario tower (:mod:`recsys_jax.models.scenario`) turns
the trunk output at each position into the user embedding of each label's scenario (the label and the
next event's surface); :func:`recsys_jax.train.multilabel.multi_label_loss` trains every label a
position has (:mod:`recsys_jax.data.event_examples`) with a sampled softmax over the label's candidate
pool. Data, checkpoints, sharding and the loop are the plain task's (:class:`RecsysTask`).

Not here yet: evaluation during training (per-scenario metrics): ``eval_data`` is None, so a unified
config sets ``train.best_metric: null``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from core_jax.config import ConfigError
from core_jax.task import DataContext
from recsys_jax.data.event_examples import LabelTables, compile_labels, event_train_example, label_target_counts
from recsys_jax.models import build_model
from recsys_jax.models.hstu import HSTUConfig
from recsys_jax.train.multilabel import label_log_q, multi_label_loss, sample_negatives
from recsys_jax.train.task import RecsysTask, save_run_dataset


def unified_model_config(cfg) -> HSTUConfig:
    """The HSTU config of a unified run: the ``model.hstu`` section plus one scenario label per label."""
    n = len(cfg.unified.labels) if cfg.unified.scenario_tower else 0
    return dataclasses.replace(cfg.model.hstu, num_scenario_labels=n)


class UnifiedTask(RecsysTask):
    """:class:`RecsysTask` with per-event inputs, per-label targets and the multi-label loss."""


    @functools.cached_property
    def labels(self) -> LabelTables:
        """The labels compiled against the dataset's vocabularies (checked against the model config)."""
        ds, hstu = self.dataset, self.cfg.model.hstu
        try:
            tables = compile_labels(self.cfg.unified.labels, ds.events)
        except ValueError as e:
            raise ConfigError(f"config key 'unified.labels': {e} (dataset {ds.path})") from None
        for key, names in (("num_actions", ds.events["actions"]), ("num_surfaces", ds.events["surfaces"])):
            size = getattr(hstu, key)
            if 0 < size < len(names):
                raise ConfigError(f"config key 'model.hstu.{key}': {size} is smaller than the dataset's vocabulary "
                                  f"{names} ({len(names)} names); set it to at least {len(names)} (0: not an input)")
        return tables

    @functools.cached_property
    def label_log_q(self) -> np.ndarray:
        counts = None
        if self.cfg.unified.loss.sampler == "popularity":
            counts = label_target_counts(self.dataset.split_source("train"), self.labels, self.num_items)
        return label_log_q(self.labels.pool, counts, self.cfg.unified.loss)

    # ---------------------------------------------------------------- Task protocol
    def create_model(self, rngs):
        return build_model("hstu", unified_model_config(self.cfg), self.num_items, rngs)

    def scenario_embeddings(self, model, batch, *, deterministic: bool) -> jax.Array:
        """``[B, L, num_labels, D]``: each position's user embedding for each label's scenario
        (the label, the next event's surface)."""
        h = model(batch["item_ids"], batch["timestamps"], deterministic=deterministic, actions=batch["actions"],
                  surfaces=batch["surfaces"], is_ad=batch["is_ad"])
        n = len(self.cfg.unified.labels)
        h = jnp.broadcast_to(h[:, :, None, :], h.shape[:2] + (n, h.shape[-1]))
        if not self.cfg.unified.scenario_tower:
            return h
        return model.scenario(h, jnp.arange(n), batch["target_surfaces"][:, :, None])

    def loss(self, model, batch, rng):
        rng_neg, rng_dropout = jax.random.split(rng)
        nnx.reseed(model, default=rng_dropout)
        user = self.scenario_embeddings(model, batch, deterministic=False)
        u = self.cfg.unified
        log_q = jnp.asarray(self.label_log_q)
        negatives = sample_negatives(rng_neg, log_q, u.loss.num_negatives) if u.loss.num_negatives else None
        return multi_label_loss(user, batch["target_ids"], batch["label_mask"], model.item_embeddings(), negatives,
                                log_q, self.labels.weights, u.loss, temperature=self.cfg.loss.temperature,
                                normalize_embeddings=self.cfg.loss.l2_normalize, names=self.labels.names)

    def eval_step(self, model, batch):
        raise NotImplementedError("unified runs have no evaluation step yet (per-scenario metrics)")

    def train_data(self, ctx: DataContext):
        d = self.cfg.data
        if ctx.process_index == 0:
            save_run_dataset(self.dataset, self.cfg.train.run_dir)
        _ = self.label_log_q  # resolve (and check the labels) before tracing
        return self.dataset.train_iterator(batch_size=ctx.batch_size, max_len=d.max_len, seed=ctx.seed,
                                           random_windows=d.random_windows, padding=d.padding,
                                           shard_index=ctx.process_index, shard_count=ctx.process_count,
                                           worker_count=d.worker_count, example_fn=event_train_example,
                                           labels=self.labels)

    def eval_data(self, ctx: DataContext):
        return None
