"""Caches of frozen encoders' outputs, so the train step runs neither the text encoder nor the VAE encoder.

:class:`EncodeCache` maps a row of inputs (its bytes) to a frozen encoder's output for that row. The new rows
of a lookup are encoded together, ``chunk`` at a time at one fixed shape ``[chunk, ...]`` (a short chunk padded
with copies of its last row): XLA computes each row of a batch independently of the others, so at a fixed shape
a row's encoding does not depend on which batch first brought it nor where in the chunk it sits (a resumed run
re-encodes to the same bits; tested), and the first epoch costs one call per ``chunk`` new rows, not one per
row. Least recently used rows are evicted past ``max_entries``. Two are used:

- text (``text_encoder.cache``): tokenized caption (``input_ids``, ``attention_mask``) -> token states;
- latents (``vae.cache_latents``): image -> the VAE posterior's moments (mean and log-variance), from which
  the step draws its latent sample. Only an identical image hits, so this pays off when the same images
  recur across epochs (no random crop), as on Shapes.

:class:`CachedIterator` wraps a checkpointable batch iterator, replacing the keys a cache reads with the
key it writes; its state is the wrapped iterator's.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from canvas_jax import text_conditioning


class EncodeCache:
    """LRU cache of ``encode(*row)`` keyed by the row's bytes (at most ``max_entries`` kept); new rows are encoded
    ``chunk`` at a time."""

    def __init__(self, module: nnx.Module, encode: Callable, max_entries: int, *, what: str, dtypes: Sequence,
                 chunk: int = 32):
        if max_entries < 1:
            raise ValueError(f"{what} cache size must be >= 1, got {max_entries}")
        if chunk < 1:
            raise ValueError(f"{what} cache chunk must be >= 1, got {chunk}")
        graphdef, state = nnx.split(module)
        self._state = state
        self._encode = jax.jit(lambda st, *xs: encode(nnx.merge(graphdef, st), *xs))
        self._store: collections.OrderedDict[bytes, np.ndarray] = collections.OrderedDict()
        self.max_entries, self.what, self.dtypes, self.chunk = max_entries, what, tuple(dtypes), chunk
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def _encode_rows(self, rows: list[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
        out = []
        for start in range(0, len(rows), self.chunk):
            part = rows[start:start + self.chunk]
            part = part + [part[-1]] * (self.chunk - len(part))
            cols = [jnp.asarray(np.stack(c)) for c in zip(*part)]
            out.extend(np.asarray(jax.device_get(self._encode(self._state, *cols))))
        return out[:len(rows)]

    def lookup(self, *arrays) -> np.ndarray:
        """The encodings ``[B, ...]`` (numpy float32) of the rows of ``arrays`` (each ``[B, ...]``)."""
        arrays = [np.asarray(a, d) for a, d in zip(arrays, self.dtypes, strict=True)]
        if len({a.shape[0] for a in arrays}) != 1:
            raise ValueError(f"{self.what} cache: expected inputs with one batch size, got shapes "
                             f"{[a.shape for a in arrays]}")
        rows = list(zip(*arrays))
        keys = [b"".join(r.tobytes() for r in row) for row in rows]
        found = {k: self._store[k] for k in dict.fromkeys(keys) if k in self._store}
        new = {k: row for k, row in zip(keys, rows) if k not in found}
        found.update(zip(new, self._encode_rows(list(new.values()))))
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        for k in dict.fromkeys(keys):  # most recently used last
            self._store[k] = found[k]
            self._store.move_to_end(k)
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return np.stack([found[k] for k in keys])


def text_embedding_cache(encoder: nnx.Module, max_entries: int = 20000, chunk: int = 32) -> EncodeCache:
    """Token states ``[B, T, D]`` of tokenized captions: ``lookup(input_ids, attention_mask)``."""
    return EncodeCache(encoder, text_conditioning.encode, max_entries, what="text_encoder",
                       dtypes=(np.int32, np.int32), chunk=chunk)


def _moments(vae, image):
    post = vae.encode(image.astype(jnp.float32))
    return jnp.concatenate([post.mean, post.logvar], axis=-1).astype(jnp.float32)


def latent_cache(vae: nnx.Module, max_entries: int = 50000, chunk: int = 32) -> EncodeCache:
    """VAE posterior moments ``[B, h, w, 2 * latent_channels]`` of images in [-1, 1]: ``lookup(image)``."""
    return EncodeCache(vae, _moments, max_entries, what="vae latent", dtypes=(np.float32,), chunk=chunk)


class CachedIterator:
    """Batches of ``inner`` with ``cache.lookup(*batch[reads])`` under ``writes``, the ``drops`` keys removed
    (checkpointable: its state is ``inner``'s)."""

    def __init__(self, inner, cache: EncodeCache, reads: Sequence[str], writes: str, drops: Sequence[str] = ()):
        self.inner, self.cache, self.reads, self.writes, self.drops = inner, cache, tuple(reads), writes, tuple(drops)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = dict(next(self.inner))
        missing = [k for k in self.reads if k not in batch]
        if missing:
            raise KeyError(f"{self.cache.what} cache: batch has no {missing} (keys: {sorted(batch)})")
        batch[self.writes] = self.cache.lookup(*(batch[k] for k in self.reads))
        for k in self.drops:
            batch.pop(k, None)
        return batch

    # Grain's checkpoint handler stores bytes for iterators that are not grain DatasetIterators.
    def get_state(self) -> bytes:
        state = self.inner.get_state()
        return state if isinstance(state, bytes) else json.dumps(state).encode()

    def set_state(self, state: bytes) -> None:
        if isinstance(self.inner, CachedIterator):
            self.inner.set_state(state)
        else:
            self.inner.set_state(json.loads(state.decode() if isinstance(state, bytes) else state))

    def start_prefetch(self) -> None:
        if hasattr(self.inner, "start_prefetch"):
            self.inner.start_prefetch()
