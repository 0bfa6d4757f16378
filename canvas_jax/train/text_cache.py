"""Text-embedding caching: each distinct caption is encoded once, outside the train step.

:class:`TextEmbeddingCache` maps a tokenized caption (its ``input_ids`` and ``attention_mask`` bytes) to the
frozen encoder's token states, computed by one jitted call per new caption at a fixed shape ``[1, T]``,
so a caption's embedding never depends on which batch first brought it (a resumed run re-encodes
to the same bits). :class:`CachedTextIterator` wraps a checkpointable batch iterator and replaces
``input_ids`` / ``attention_mask`` with ``text_emb`` ``[B, T, D]``; its state is the wrapped iterator's.
"""

from __future__ import annotations

import collections
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from canvas_jax.train import text_encoders


class TextEmbeddingCache:
    """LRU cache of token states keyed by tokenized caption (at most ``max_entries`` kept)."""

    def __init__(self, encoder: nnx.Module, max_entries: int = 20000):
        if max_entries < 1:
            raise ValueError(f"text_encoder.cache_size must be >= 1, got {max_entries}")
        graphdef, state = nnx.split(encoder)
        self._state = state
        self._encode = jax.jit(lambda st, ids, mask: text_encoders.encode(nnx.merge(graphdef, st), ids, mask))
        self._store: collections.OrderedDict[bytes, np.ndarray] = collections.OrderedDict()
        self.max_entries = max_entries
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def lookup(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Token states ``[B, T, D]`` float32 for a tokenized batch."""
        input_ids = np.asarray(input_ids, np.int32)
        attention_mask = np.asarray(attention_mask, np.int32)
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"text cache: expected input_ids and attention_mask [B, T] of one shape, got "
                             f"{input_ids.shape} and {attention_mask.shape}")
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            key = ids.tobytes() + mask.tobytes()
            emb = self._store.get(key)
            if emb is None:
                self.misses += 1
                emb = np.asarray(jax.device_get(self._encode(self._state, jnp.asarray(ids[None]),
                                                             jnp.asarray(mask[None]))))[0]
                self._store[key] = emb
                if len(self._store) > self.max_entries:
                    self._store.popitem(last=False)
            else:
                self.hits += 1
                self._store.move_to_end(key)
            rows.append(emb)
        return np.stack(rows)


class CachedTextIterator:
    """Batches of ``inner`` with ``text_emb`` from ``cache`` in place of the token ids (checkpointable)."""

    def __init__(self, inner, cache: TextEmbeddingCache):
        self.inner, self.cache = inner, cache

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = dict(next(self.inner))
        ids, mask = batch.pop("input_ids"), batch.pop("attention_mask")
        batch["text_emb"] = self.cache.lookup(ids, mask)
        return batch

    # Grain's checkpoint handler stores bytes for iterators that are not grain DatasetIterators.
    def get_state(self) -> bytes:
        return json.dumps(self.inner.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        self.inner.set_state(json.loads(state.decode() if isinstance(state, bytes) else state))

    def start_prefetch(self) -> None:
        if hasattr(self.inner, "start_prefetch"):
            self.inner.start_prefetch()
