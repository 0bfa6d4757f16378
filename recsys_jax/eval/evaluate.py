"""Full-corpus evaluation of next-item retrieval on the leave-one-out validation or test split.

Every user of the split is one example: the model embeds the history (the last ``max_len`` items)
and every item ``1..N`` is ranked by ``<user, item>``; items the user interacted with before the
target (the WHOLE history, not only the ``max_len`` window) are removed from the ranking when
``exclude_history``. Batches are fixed-size (the split is padded with ``valid=False`` examples), so one
compiled program serves every batch; metrics are weighted sums plus a ``count`` (exact means after
:func:`recsys_jax.eval.metrics.finalize_metrics`, or the loop's own normalisation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from core_jax import data as data_lib
from recsys_jax.data.sequences import pad_sequence
from recsys_jax.data.splits import eval_example
from recsys_jax.eval.metrics import DEFAULT_KS, finalize_metrics, ranking_metrics


def history_length(dataset) -> int:
    """How many history ids an evaluation example carries for exclusion: the longest history."""
    longest = int(dataset.metadata.get("max_length") or (dataset.lengths.max() if len(dataset.lengths) else 1))
    return max(1, longest - 1)


def targets_in_history(dataset, split: str) -> float:
    """Fraction of ``split``'s examples whose target item also appears earlier in the user's history:
    with ``exclude_history`` these are misses by construction (an upper bound of ``1 - fraction`` on
    every hit rate); without it they can be hits."""
    if split not in ("validation", "test"):
        raise ValueError(f"evaluation split must be 'validation' or 'test', got {split!r}")
    source = dataset.split_source(split)
    repeats = 0
    for i in range(len(source)):
        items = np.asarray(source[i]["items"])
        t = len(items) - (2 if split == "validation" else 1)
        repeats += bool(np.any(items[:t] == items[t]))
    return repeats / max(len(source), 1)


def eval_inputs(example: Mapping, *, split: str, max_len: int, padding: str = "left",
                history_len: int = 0) -> dict[str, np.ndarray]:
    """:func:`recsys_jax.data.splits.eval_example` fields plus ``history_ids`` ``[history_len]``: every
    item before the target (most recent kept if longer), padded with 0 on the right."""
    out = eval_example(example, split=split, max_len=max_len, padding=padding)
    out["timestamps"] = out["timestamps"].astype(np.int32)  # the models take int32 seconds
    if history_len > 0:
        items = np.asarray(example["items"], np.int32)
        t = {"validation": len(items) - 2, "test": len(items) - 1}[split] if len(items) else 0
        out["history_ids"] = pad_sequence(items[:max(t, 0)], history_len, padding="right", dtype=np.int32)
    return out


def eval_iterator(dataset, split: str, *, batch_size: int, max_len: int, padding: str = "left",
                  history_len: int | None = None, shard_index: int | None = None, shard_count: int | None = None):
    """One pass over ``split`` in whole batches of :func:`eval_inputs` (``batch_size`` per process).
    ``history_len`` None: :func:`history_length` of the dataset; 0: no ``history_ids``."""
    if split not in ("validation", "test"):
        raise ValueError(f"evaluation split must be 'validation' or 'test', got {split!r}")
    count = jax.process_count() if shard_count is None else shard_count
    history_len = history_length(dataset) if history_len is None else history_len
    source = dataset.split_source(split, pad_to_multiple=batch_size * count)
    fn = functools.partial(eval_inputs, split=split, max_len=max_len, padding=padding, history_len=history_len)
    return data_lib.make_iterator(source, batch_size=batch_size, shuffle=False, num_epochs=1, transforms=[fn],
                                  shard_index=shard_index, shard_count=shard_count, drop_remainder=True)


def last_real(values: jax.Array, mask: jax.Array) -> jax.Array:
    """``values[b, i_b]`` where ``i_b`` is the last real position of row ``b`` (left or right padding)."""
    pos = jnp.arange(mask.shape[1])
    last = jnp.max(jnp.where(mask, pos, 0), axis=1)
    return jnp.take_along_axis(values, last[:, None, None], axis=1)[:, 0]


def user_embeddings(model: nnx.Module, item_ids: jax.Array, timestamps: jax.Array | None) -> jax.Array:
    """``[B, D]`` user embedding after the whole (padded) history ``item_ids [B, L]``."""
    out = model(item_ids, timestamps, deterministic=True)
    return last_real(out, item_ids > 0)


def batch_metrics(user_emb: jax.Array, item_table: jax.Array, batch: Mapping[str, jax.Array], *,
                  ks: Sequence[int] = DEFAULT_KS, ties: str = "pessimistic",
                  exclude_history: bool = True) -> dict[str, jax.Array]:
    """Weighted sums of hr@k, ndcg@k, mrr and ``count`` (= valid examples) for one batch."""
    exclude = batch.get("history_ids") if exclude_history else None
    if exclude_history and exclude is None:
        exclude = batch["item_ids"]
    weights = batch["valid"].astype(jnp.float32)
    return ranking_metrics(user_emb, batch["target_id"], item_table, exclude, weights,
                           ks=tuple(int(k) for k in ks), ties=ties)


def model_eval_step(model: nnx.Module, batch: Mapping[str, jax.Array], **kw) -> dict[str, jax.Array]:
    """:func:`batch_metrics` of ``model`` on one batch (traceable: the task's ``eval_step``)."""
    user = user_embeddings(model, batch["item_ids"], batch.get("timestamps"))
    return batch_metrics(user, model.item_embeddings(), batch, **kw)


def accumulate(step: Callable[[dict], Mapping[str, jax.Array]], batches: Iterable[dict], *,
               progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Run ``step`` over ``batches`` and return the exact means (sums / count)."""
    sums: dict[str, float] | None = None
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        m = jax.device_get(step(batch))
        sums = {k: float(v) for k, v in m.items()} if sums is None else {k: sums[k] + float(v) for k, v in m.items()}
    if sums is None:
        raise ValueError("no evaluation batches: the split is empty")
    count = sums["count"]
    return {**finalize_metrics(sums), "count": int(round(count))}


def evaluate_model(model: nnx.Module, dataset, split: str = "test", *, batch_size: int = 256, max_len: int = 50,
                   padding: str = "left", ks: Sequence[int] = DEFAULT_KS, ties: str = "pessimistic",
                   exclude_history: bool = True, progress: bool = False) -> dict[str, float]:
    """Full-corpus metrics of ``model`` on ``split`` of ``dataset`` (this process, no mesh)."""
    kw = dict(ks=tuple(int(k) for k in ks), ties=ties, exclude_history=exclude_history)
    batches = eval_iterator(dataset, split, batch_size=batch_size, max_len=max_len, padding=padding,
                            history_len=None if exclude_history else 0, shard_index=0, shard_count=1)
    return accumulate(lambda b: _jitted_model_eval_step(model, b, **kw), batches, progress=progress,
                      desc=f"eval {split}")


_jitted_model_eval_step = nnx.jit(model_eval_step, static_argnames=("ks", "ties", "exclude_history"))
