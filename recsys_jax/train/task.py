"""Generative retrieval training on the shared loop: the :class:`core_jax.task.Task` of ``recsys-jax train``.

* loss: autoregressive next-item sampled softmax at every real position (uniform negatives and/or
  in-batch negatives with logQ correction from the dataset's item counts), temperature, L2 norm;
* eval: full-corpus ranking of the validation (or test) split, history excluded, as weighted sums
  plus a ``count`` (the loop divides: exact means); ``train.best_metric`` (e.g. ``ndcg@10``) keeps
  the best state in ``RUN_DIR/best``;
* data: Grain iterators over the dataset folder (built into a cache on first use), sharded per process.

The run folder also gets ``RUN_DIR/dataset/`` (id maps, item counts, side info, source path), so a
checkpoint can be served (:class:`recsys_jax.Retriever`) without the training data.

    cfg = load_config("configs/recsys/hstu_ml1m.yaml", ["train.steps=1000"])
    state, metrics = train(cfg)
"""

from __future__ import annotations

import functools
import json
import os
import shutil

import jax
import numpy as np
from flax import nnx

from core_jax.config import ConfigError
from core_jax.loop import Trainer
from core_jax.packing import packed_fields
from core_jax.task import DataContext
from recsys_jax.data.cold_items import cold_item_mask, cold_train_example
from recsys_jax.data.item_text import ensure_item_text, load_item_text
from recsys_jax.data.loader import RecsysDataset, load_dataset
from recsys_jax.data.splits import train_example
from recsys_jax.eval.evaluate import eval_iterator, model_eval_step
from recsys_jax.models import build_model
from recsys_jax.train.config import RecsysConfig, validate
from recsys_jax.train.dataset_cache import resolve_dataset
from recsys_jax.train.losses import log_q_from_counts, sampled_softmax_loss

RUN_DATASET_DIR = "dataset"  # inside the run folder
RUN_DATASET_FILES = ("id_maps.json", "item_counts.json", "items.json", "events.json", "item_text.json")


class RecsysTask:
    """The recsys training task. ``dataset`` (optional) avoids resolving ``cfg.data``; ``num_items``
    alone is enough to build the model (serving, restoring) without opening the data."""

    def __init__(self, cfg: RecsysConfig, dataset: RecsysDataset | None = None, *, num_items: int | None = None,
                 eval_split: str | None = None):
        self.cfg = validate(cfg)
        self._dataset = dataset
        # restoring a run (num_items given, no dataset): the item text table comes from the checkpoint
        self._text_from_checkpoint = dataset is None and num_items is not None
        if num_items is None:
            num_items = self.dataset.num_items
        self.num_items = int(num_items)
        self.eval_split = eval_split or cfg.eval.split
        if cfg.model.item_text.enabled:
            _ = self.item_text_table  # computed (or loaded) now, never inside a traced create_model
        loss = cfg.loss
        self.uses_log_q = loss.in_batch_negatives and loss.logq_correction

    @functools.cached_property
    def dataset(self) -> RecsysDataset:
        if self._dataset is None:
            self._dataset = load_dataset(resolve_dataset(self.cfg.data))
        return self._dataset

    @functools.cached_property
    def log_q(self) -> np.ndarray | None:
        if not self.uses_log_q:
            return None
        ds = self.dataset
        counts = ds.item_counts if self.cfg.loss.logq_counts == "train" else ds.item_counts_all
        if self.cold_items is not None:
            counts = np.where(self.cold_items, 0, counts)  # never trained on
        return log_q_from_counts(counts)

    @functools.cached_property
    def cold_items(self) -> np.ndarray | None:
        """``[N + 1]`` bool of the items held out of training (``data.cold_item_fraction``), or None."""
        d = self.cfg.data
        if not d.cold_item_fraction:
            return None
        return cold_item_mask(self.num_items, d.cold_item_fraction, d.cold_item_seed)

    @functools.cached_property
    def warm_items(self) -> np.ndarray | None:
        """The ids negatives are drawn from when cold items are held out (else None: every item)."""
        return None if self.cold_items is None else (np.flatnonzero(~self.cold_items[1:]) + 1).astype(np.int32)

    @functools.cached_property
    def item_text_table(self) -> np.ndarray | None:
        """``[N + 1, T]`` item text embeddings for ``model.item_text`` (None in mode ``id``): ``path``, else the
        dataset's (computed on first use, cached under ``data.cache_dir/item_text``); zeros when restoring a
        run (the checkpoint holds the table)."""
        t = self.cfg.model.item_text
        if not t.enabled:
            return None
        if self._text_from_checkpoint:
            return np.zeros((self.num_items + 1, t.dim), np.float32)
        if t.path:
            return load_item_text(t.path, self.num_items, t.dim)
        table = ensure_item_text(self.dataset, fields=t.fields, cache_dir=os.path.join(self.cfg.data.cache_dir,
                                                                                         "item_text"), verbose=True)
        if table.shape[1] != t.dim:
            raise ConfigError(f"config key 'model.item_text.dim': {t.dim}, but the item text embeddings are "
                              f"{table.shape[1]}-d")
        return table

    # ---------------------------------------------------------------- Task protocol
    def create_model(self, rngs):
        return build_model(self.cfg.model.name, self.cfg.model.selected(), self.num_items, rngs,
                           item_text=self.cfg.model.item_text, text_table=self.item_text_table)

    def loss(self, model, batch, rng):
        rng_loss, rng_dropout = jax.random.split(rng)
        nnx.reseed(model, default=rng_dropout)  # dropout draws from the step's rng
        user = model(batch["item_ids"], batch["timestamps"], deterministic=False, **packed_fields(batch))
        items = model.item_embeddings(deterministic=False)  # item_text.id_dropout acts in training only
        loss, metrics = sampled_softmax_loss(user, batch["target_ids"], batch["mask"], items, rng_loss, self.cfg.loss,
                                             self.log_q, negative_pool=self.warm_items)
        return add_text_only_loss(model, self.cfg.model.item_text.text_loss_weight, loss, metrics, lambda table: (
            sampled_softmax_loss(user, batch["target_ids"], batch["mask"], table, jax.random.fold_in(rng_loss, 1),
                                 self.cfg.loss, self.log_q, negative_pool=self.warm_items)[0]))

    def eval_step(self, model, batch):
        e = self.cfg.eval
        return model_eval_step(model, batch, ks=tuple(e.ks), ties=e.ties, exclude_history=e.exclude_history)

    def train_data(self, ctx: DataContext):
        d = self.cfg.data
        if ctx.process_index == 0:
            save_run_dataset(self.dataset, self.cfg.train.run_dir)
        _ = self.log_q  # resolve before tracing
        if d.pack_rows % jax.local_device_count():
            raise ConfigError(f"config key 'data.pack_rows': {d.pack_rows} must be a multiple of the local device "
                              f"count ({jax.local_device_count()}): packed rows are split over the devices")
        cold = {} if self.cold_items is None else {
            "example_fn": functools.partial(cold_train_example, fn=train_example, cold=self.cold_items)}
        return self.dataset.train_iterator(batch_size=ctx.batch_size, max_len=d.max_len, seed=ctx.seed,
                                           random_windows=d.random_windows, padding=d.padding,
                                           shard_index=ctx.process_index, shard_count=ctx.process_count,
                                           worker_count=d.worker_count, length_grouping=d.length_grouping,
                                           length_bucket=d.length_bucket, pack_rows=d.pack_rows, **cold)

    def eval_data(self, ctx: DataContext):
        e, d = self.cfg.eval, self.cfg.data
        if e.batch_size % ctx.process_count:
            raise ConfigError(f"config key 'eval.batch_size': {e.batch_size} must divide by the process count "
                              f"({ctx.process_count})")
        return eval_iterator(self.dataset, self.eval_split, batch_size=e.batch_size // ctx.process_count,
                             max_len=d.max_len, padding=d.padding, history_len=None if e.exclude_history else 0,
                             shard_index=ctx.process_index, shard_count=ctx.process_count)


def add_text_only_loss(model, weight: float, loss, metrics: dict, loss_on_table):
    """``item_text.text_loss_weight`` w > 0: ``loss + w * loss_on_table(text-only item table)``, the same targets
    scored against every item placed by its text alone (as a cold item, or a new ad, is), reported as
    ``text_only_loss``; ``(loss, metrics)`` unchanged with w = 0."""
    if not weight:
        return loss, metrics
    text_loss = loss_on_table(model.items.table(model.cfg.l2_normalize, deterministic=False, text_only=True))
    loss = loss + weight * text_loss
    return loss, {**metrics, "loss": loss, "text_only_loss": text_loss}


def save_run_dataset(dataset: RecsysDataset, run_dir: str) -> str:
    """Copy the id maps, counts and side info into ``run_dir/dataset`` (what serving needs)."""
    out = os.path.join(run_dir, RUN_DATASET_DIR)
    os.makedirs(out, exist_ok=True)
    for name in RUN_DATASET_FILES:
        src = os.path.join(dataset.path, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(out, name))
    with open(os.path.join(out, "source.json"), "w") as f:
        json.dump({"path": os.path.abspath(dataset.path), "num_items": dataset.num_items,
                   "num_users": dataset.num_users, "has_timestamps": dataset.has_timestamps}, f)
    return out


def make_task(cfg: RecsysConfig, dataset: RecsysDataset | None = None, **kw) -> RecsysTask:
    """The task of ``cfg``: :class:`RecsysTask`, or the multi-label
    :class:`recsys_jax.train.unified.UnifiedTask` with ``unified.enabled``."""
    if cfg.unified.enabled:
        from recsys_jax.train.unified import UnifiedTask  # it builds on this module

        return UnifiedTask(cfg, dataset, **kw)
    return RecsysTask(cfg, dataset, **kw)


def train(cfg: RecsysConfig, *, dataset: RecsysDataset | None = None, hooks=(), mesh=None) -> tuple[dict, dict]:
    """Train (or resume) the run ``cfg`` on the shared loop; returns ``(state, last metrics)``."""
    trainer = Trainer(make_task(cfg, dataset), cfg, hooks=hooks, mesh=mesh)
    return trainer.fit()
