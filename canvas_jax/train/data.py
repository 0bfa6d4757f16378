"""Where the training tasks get their batches: ``canvas_jax.data`` by default, or any ``DataFn``.

A ``DataFn(cfg, tokenizer, ctx, split, with_masks)`` returns a checkpointable iterator of per-process numpy
batches following the batch contract: ``image`` float32 [B, H, W, 3] in [-1, 1]; ``input_ids`` /
``attention_mask`` int32 [B, T] (tokenized by ``tokenizer``, caption dropout already applied);
``mask`` float32 [B, H, W, 1] (1 = repaint) when ``with_masks``. ``split="test"`` is read once, unshuffled
(``None`` when the dataset has no such split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax

from core_jax.data import split_names
from core_jax.task import DataContext

DataFn = Callable[[Any, Any, DataContext, str, bool], Iterator[dict] | None]

_MASK_KINDS = {"rectangle": ("rectangles",), "brush": ("brush",), "outpaint": ("outpaint",),
               "mixed": ("rectangles", "brush", "outpaint")}


def dataset_folder(cfg) -> str:
    """``cfg.data.dataset``: a dataset folder, or "shapes" (built once under ``cfg.data.dir``)."""
    d = cfg.data
    if d.dataset != "shapes":
        return d.dataset
    from canvas_jax.data.shapes import ShapesConfig, build_shapes

    shapes = ShapesConfig(resolution=d.image_size, **d.options)
    kwargs = dict(train_examples=d.num_examples, test_examples=max(d.num_examples // 20, 64))
    if jax.process_index() == 0:
        path = build_shapes(d.dir, shapes, **kwargs)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("shapes dataset written")
        path = build_shapes(d.dir, shapes, **kwargs)  # reuses what process 0 wrote
    return path


def canvas_data(cfg, tokenizer, ctx: DataContext, split: str, with_masks: bool):
    """Batches from ``canvas_jax.data`` (the Shapes default or a built dataset folder) for ``cfg.data``."""
    from canvas_jax.data.loader import ImagePipelineConfig, make_image_iterator

    d = cfg.data
    folder = dataset_folder(cfg)
    if split not in split_names(folder):
        return None
    train = split == "train"
    pipe = ImagePipelineConfig(resolution=d.image_size, random_flip=d.random_flip and train,
                               swap_left_right=d.random_flip, caption_dropout=d.caption_dropout if train else 0.0,
                               max_length=cfg.text_encoder.max_length,
                               mask_kinds=_MASK_KINDS[d.masks] if with_masks else ())
    return make_image_iterator(folder, tokenizer, pipe, batch_size=ctx.batch_size, split=split, seed=ctx.seed,
                               shuffle=train, num_epochs=None if train else 1, shard_index=ctx.process_index,
                               shard_count=ctx.process_count, worker_count=d.worker_count)
