"""Unified multi-label training on an event dataset: the task ``recsys-jax train`` runs with ``unified.enabled``.

One HSTU trunk reads the event sequence (item + action + surface (+ is-ad) tokens, time bias as in
plain HSTU: :mod:`recsys_jax.models.hstu`); a scenario tower (:mod:`recsys_jax.models.scenario`) turns
the trunk output at each position into the user embedding of each label's scenario (the label and the
next event's surface); :func:`recsys_jax.train.multilabel.multi_label_loss` trains every label a
position has (:mod:`recsys_jax.data.event_examples`) with a sampled softmax over the label's candidate
pool. Data, checkpoints, sharding and the loop are the plain task's (:class:`RecsysTask`).

``unified.split``: leave-one-out (train on all but each user's last two events) or a time split (train
on the events before ``T``, :func:`recsys_jax.eval.scenarios.time_cutoff`); per-scenario evaluation
(``recsys-jax eval``) follows the same split (:mod:`recsys_jax.eval.scenarios`). Not here: evaluation
during training (``eval_data`` is None, so a unified config sets ``train.best_metric: null``).

``model.hstu.num_actions`` / ``num_surfaces`` = -1 take the dataset's vocabulary sizes (resolved when
the task opens the dataset, so the saved ``config.yaml`` holds the numbers). With
``unified.scenario_tower: false`` the model may be any item-sequence encoder (``two_tower``,
``sasrec``): one user embedding for every label, trained with the same multi-label loss (a baseline).

``model.item_text`` (modes, ``id_dropout``, ``text_loss_weight``: :class:`recsys_jax.models.ItemTextConfig`)
represents items by their side-info text as in single-label runs (a new ad is placed by its advertiser and
category text before it has any event); ``profile_weight`` (a late-fused score) is single-label only.
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
from recsys_jax.data.attribution import parse_window
from recsys_jax.data.event_examples import LabelTables, compile_labels, event_train_example, label_target_counts
from recsys_jax.eval.scenarios import time_cutoff, trunk_outputs
from recsys_jax.models import build_model
from recsys_jax.models.hstu import HSTUConfig
from recsys_jax.train.multilabel import label_log_q, multi_label_loss, negative_cdf, sample_negatives
from recsys_jax.train.task import RecsysTask, add_text_only_loss, save_run_dataset


def unified_model_config(cfg) -> HSTUConfig:
    """The HSTU config of a unified run: the ``model.hstu`` section plus one scenario label per label."""
    n = len(cfg.unified.labels) if cfg.unified.scenario_tower else 0
    return dataclasses.replace(cfg.model.hstu, num_scenario_labels=n)


def resolve_vocab_sizes(cfg, events: dict) -> None:
    """Set ``model.hstu.num_actions`` / ``num_surfaces`` given as -1 to the dataset's vocabulary sizes."""
    h = cfg.model.hstu
    sizes = {k: len(events[v]) for k, v in (("num_actions", "actions"), ("num_surfaces", "surfaces"))
             if getattr(h, k) == -1}
    if sizes:
        cfg.model.hstu = dataclasses.replace(h, **sizes)


class UnifiedTask(RecsysTask):
    """:class:`RecsysTask` with per-event inputs, per-label targets and the multi-label loss."""

    def __init__(self, cfg, dataset=None, **kw):
        super().__init__(cfg, dataset, **kw)
        h = cfg.model.hstu
        if cfg.model.name == "hstu" and -1 in (h.num_actions, h.num_surfaces):
            if not self.dataset.events:
                raise ConfigError(f"config key 'model.hstu.num_actions': -1 takes the dataset's vocabulary, but "
                                  f"{self.dataset.path} is not an event dataset (no events.json)")
            resolve_vocab_sizes(cfg, self.dataset.events)

    @functools.cached_property
    def cutoff(self) -> int | None:
        """``T`` of a time split (unix seconds; training uses the events before it), else None."""
        sp = self.cfg.unified.split
        if sp.protocol != "time":
            return None
        return time_cutoff(self.dataset, sp.cutoff) - sp.backtest * parse_window(sp.window)


    @functools.cached_property
    def labels(self) -> LabelTables:
        """The labels compiled against the dataset's vocabularies (checked against the model config)."""
        ds, hstu = self.dataset, self.cfg.model.hstu
        try:
            u = self.cfg.unified
            labels = [dataclasses.replace(lab, weight=float(u.label_weights.get(lab.name, lab.weight)))
                      for lab in u.labels]
            tables = compile_labels(labels, ds.events)
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
            counts = label_target_counts(self.dataset.split_source("train"), self.labels, self.num_items,
                                         cutoff=self.cutoff)
        return label_log_q(self.labels.pool, counts, self.cfg.unified.loss)

    @functools.cached_property
    def label_cdf(self) -> np.ndarray:
        return negative_cdf(self.label_log_q)

    # ---------------------------------------------------------------- Task protocol
    def create_model(self, rngs):
        text = dict(item_text=self.cfg.model.item_text, text_table=self.item_text_table)
        if self.cfg.model.name != "hstu":  # an item-sequence baseline (no scenario tower: see validate_unified)
            return build_model(self.cfg.model.name, self.cfg.model.selected(), self.num_items, rngs, **text)
        return build_model("hstu", unified_model_config(self.cfg), self.num_items, rngs, **text)

    def scenario_embeddings(self, model, batch, *, deterministic: bool) -> jax.Array:
        """``[B, L, num_labels, D]``: each position's user embedding for each label's scenario
        (the label, the next event's surface)."""
        h = trunk_outputs(model, batch, deterministic=deterministic)
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
        negatives = sample_negatives(rng_neg, self.label_cdf, u.loss.num_negatives) if u.loss.num_negatives \
            else None

        def loss_on(table):
            return multi_label_loss(user, batch["target_ids"], batch["label_mask"], table, negatives, log_q,
                                    self.labels.weights, u.loss, temperature=self.cfg.loss.temperature,
                                    normalize_embeddings=self.cfg.loss.l2_normalize, names=self.labels.names)

        loss, metrics = loss_on(model.item_embeddings(deterministic=False))  # item_text.id_dropout: training only
        return add_text_only_loss(model, self.cfg.model.item_text.text_loss_weight, loss, metrics,
                                  lambda table: loss_on(table)[0])

    def eval_step(self, model, batch):
        raise NotImplementedError("unified runs are evaluated per scenario after training (`recsys-jax eval`, "
                                  "recsys_jax.eval.scenarios), not during training")

    def train_data(self, ctx: DataContext):
        d = self.cfg.data
        if ctx.process_index == 0:
            save_run_dataset(self.dataset, self.cfg.train.run_dir)
        _ = self.label_cdf  # resolve (and check the labels) before tracing
        tw = self.cfg.unified.target_window
        window = parse_window(tw) if tw is not None else None
        return self.dataset.train_iterator(batch_size=ctx.batch_size, max_len=d.max_len, seed=ctx.seed,
                                           random_windows=d.random_windows, padding=d.padding,
                                           shard_index=ctx.process_index, shard_count=ctx.process_count,
                                           worker_count=d.worker_count, length_grouping=d.length_grouping,
                                           pack_rows=d.pack_rows, example_fn=event_train_example,
                                           labels=self.labels, cutoff=self.cutoff, target_window=window)

    def eval_data(self, ctx: DataContext):
        return None
