"""Cold items: a seeded fraction of the catalogue held out of training entirely.

:func:`cold_item_mask` picks them; :func:`drop_cold_items` removes every interaction with them from a
record's *training prefix* (the part :func:`recsys_jax.data.splits.train_example` reads), so they are
in no training input and no training target, while the validation and test items (the last two) stay:
a cold test target is then an item the model never saw a single interaction with, placed only by its
side information (text). Evaluation (:mod:`recsys_jax.eval.coldstart`) scores them over the full corpus.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys_jax.data.splits import train_length


def cold_item_mask(num_items: int, fraction: float, seed: int = 0) -> np.ndarray:
    """``[num_items + 1]`` bool: ``round(fraction * num_items)`` items drawn uniformly (seeded); row 0 False."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"cold item fraction must be in [0, 1), got {fraction}")
    cold = np.zeros(num_items + 1, bool)
    n = int(round(fraction * num_items))
    if n:
        cold[1 + np.random.default_rng(seed).choice(num_items, size=n, replace=False)] = True
    return cold


def drop_cold_items(example: dict[str, Any], cold: np.ndarray) -> dict[str, Any]:
    """``example`` with the cold items of its training prefix removed (with their timestamps and other
    per-event fields); its last two items (validation and test, never trained on) are kept after the
    filtered prefix only when the prefix keeps at least two items, so the training prefix of the result is
    exactly the filtered one (a prefix of fewer than two items trains nothing)."""
    items = np.asarray(example["items"])
    n = len(items)
    m = train_length(n)
    keep = ~cold[items[:m]]
    per_event = {k for k, v in example.items() if isinstance(v, np.ndarray) and v.ndim == 1 and len(v) == n}
    tail = n > m and int(keep.sum()) >= 2
    out = dict(example)
    for k in per_event:
        v = np.asarray(example[k])
        out[k] = np.concatenate([v[:m][keep], v[m:]]) if tail else v[:m][keep]
    return out


def cold_train_example(example: dict[str, Any], *, fn, cold: np.ndarray, **kw) -> dict[str, Any]:
    """``fn(drop_cold_items(example, cold), **kw)``: a training example function without cold items."""
    return fn(drop_cold_items(example, cold), **kw)
