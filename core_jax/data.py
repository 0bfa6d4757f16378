"""Data plumbing: TFDS builders that write ArrayRecord (no TensorFlow), read back through Grain.

``build_dataset`` turns example generators into a TFDS dataset folder (``file_format='array_record'``);
``open_split`` gives a random-access source for it; ``make_iterator`` shards it per process, shuffles
with a seed (a new order every epoch), applies transforms, batches, and returns a Grain iterator whose
state the checkpoint captures. With a :class:`LengthGrouping` it batches examples of similar length
together and trims each batch's sequence axis to a length bucket, or packs each batch's examples into fewer
rows (:class:`LengthGroupedOrder`, :mod:`core_jax.packing`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from core_jax import packing

Example = dict[str, Any]


def build_dataset(
    name: str,
    data_dir: str | os.PathLike,
    features: Mapping[str, tfds.features.FeatureConnector],
    splits: Mapping[str, Callable[[], Iterable[tuple[str | int, Example]]]],
    *,
    version: str = "1.0.0",
    description: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Write ``splits`` (split name -> generator of (key, example)) as an ArrayRecord TFDS dataset.

    Returns the dataset folder (``data_dir/name/version``), which :func:`open_split` reads. Use
    ``tfds.features.Tensor`` features (TFDS ``Image`` needs TensorFlow): images as
    ``Tensor(shape=(None, None, 3), dtype=np.uint8, encoding='zlib')`` or encoded bytes.
    """

    class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(version)
        RELEASE_NOTES = {version: "built by core_jax.data.build_dataset"}

        def _info(self):
            return self.dataset_info_from_configs(
                description=description,
                features=tfds.features.FeaturesDict(dict(features)),
                metadata=tfds.core.MetadataDict(metadata or {}),
                disable_shuffling=True,  # records keep generation order; Grain shuffles at read time
            )

        def _split_generators(self, dl_manager):
            return {split: gen() for split, gen in splits.items()}

        def _generate_examples(self):  # unused: _split_generators yields the generators directly
            raise NotImplementedError

    _Builder.name = name
    builder = _Builder(data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return os.fspath(builder.data_path)


def open_split(dataset_dir: str | os.PathLike, split: str):
    """A random-access source (len, __getitem__) over one split of a dataset written by build_dataset."""
    builder = tfds.builder_from_directory(os.fspath(dataset_dir))
    if split not in builder.info.splits:
        raise ValueError(f"split '{split}' not in {dataset_dir}: available {sorted(builder.info.splits)}")
    return builder.as_data_source(split=split)


def split_names(dataset_dir: str | os.PathLike) -> list[str]:
    return sorted(tfds.builder_from_directory(os.fspath(dataset_dir)).info.splits)


def dataset_metadata(dataset_dir: str | os.PathLike) -> dict:
    return dict(tfds.builder_from_directory(os.fspath(dataset_dir)).info.metadata or {})


def make_iterator(
    source,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    transforms: Sequence[Callable[[Example], Example]] = (),
    random_transforms: Sequence[Callable[[Example, np.random.Generator], Example]] = (),
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool = True,
    worker_count: int = 0,
    length_grouping: "LengthGrouping | None" = None,
) -> grain.DatasetIterator:
    """Per-process shard -> shuffle -> repeat -> transforms -> batch, as a checkpointable Grain iterator.

    ``batch_size`` is this process's share of the global batch. The shard defaults to this JAX process.
    ``random_transforms`` get a numpy Generator seeded per element (deterministic across resumes).
    ``length_grouping``: batches of similar-length examples, each trimmed to a length bucket or packed
    (``pack_rows``); the order is then global (every process draws the same shuffled order and takes its slice of
    each global batch, so all processes trim or pack a step's batch to the same shape without communicating; see
    :class:`LengthGroupedOrder`).
    """
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if length_grouping is not None:
        if not shuffle or not drop_remainder:
            raise ValueError("length_grouping needs shuffle=True and drop_remainder=True (training batches)")
        order = LengthGroupedOrder(length_grouping, len(source), batch_size=batch_size, seed=seed,
                                   shard_index=shard_index, shard_count=shard_count, num_epochs=num_epochs)
        ds = grain.MapDataset.range(order.num_elements).map(functools.partial(_grouped_record, source, order))
    else:
        ds = grain.MapDataset.source(source)
        if shard_count > 1:
            ds = ds[shard_index::shard_count]
        if shuffle:
            ds = ds.shuffle(seed=seed)
        ds = ds.repeat(num_epochs)
    for fn in transforms:
        ds = ds.map(fn)
    if random_transforms:
        ds = ds.seed(seed + 7919 * shard_index)
        for fn in random_transforms:
            ds = ds.random_map(fn)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if length_grouping is not None:
        ds = ds.map_with_index(order.pack_batch if length_grouping.pack_rows else order.trim_batch)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
    if worker_count > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(it_ds)


@dataclasses.dataclass(frozen=True)
class LengthGrouping:
    """Batches of similar-length sequence examples, each trimmed to a length bucket (less padding).

    ``lengths``: per source record, an upper bound of its example's real length along the sequence axis
    (axis 1 of a batch; examples are padded to ``max_len``). ``window``: how many global batches are grouped
    together: the records of ``window`` batches of the shuffled order are sorted by length, cut into batches,
    and the batches shuffled. ``bucket``: each batch's sequence axis is cut to its longest example's length
    rounded up to a multiple of ``bucket`` (at most ``max_len``; 0: ``max_len``, no cut). ``padding``
    "left" keeps the last columns (the padding is in front), "right" the first. Every array of a batch whose
    axis 1 has ``max_len`` entries is cut; the cut part must be all zeros (padding), else the batch raises.

    ``pack_rows`` > 0 packs each batch instead of trimming it (``bucket`` must be 0; ``window`` 1 keeps the plain
    shuffled batches): its examples share rows of ``max_len`` (:func:`core_jax.packing.pack_sequences`, real
    positions where ``length_key`` is nonzero), the row count rounded up to a multiple of ``pack_rows`` (a few
    row counts = a few compiled programs), the same on every process.
    """

    lengths: np.ndarray
    window: int
    bucket: int
    max_len: int
    padding: str = "left"
    pack_rows: int = 0
    length_key: str = "mask"

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"length grouping window must be >= 1 batch, got {self.window}")
        if self.bucket < 0:
            raise ValueError(f"length bucket must be >= 0, got {self.bucket}")
        if self.padding not in ("left", "right"):
            raise ValueError(f"padding must be 'left' or 'right', got {self.padding!r}")
        if self.pack_rows < 0 or (self.pack_rows and self.bucket):
            raise ValueError(f"pack_rows must be >= 0 and needs bucket 0 (packed rows are max_len long), got "
                             f"pack_rows={self.pack_rows}, bucket={self.bucket}")

    def bucket_length(self, longest: int) -> int:
        """The padded length of a batch whose longest example has ``longest`` real positions."""
        if not self.bucket:
            return self.max_len
        return int(min(self.max_len, max(1, -(-int(longest) // self.bucket)) * self.bucket))


class LengthGroupedOrder:
    """The record order of a length-grouped iterator, as pure functions of the element index (so a Grain
    iterator over it resumes exactly from its position).

    The global stream is a fresh seeded permutation of all records per epoch, epochs one after another (as
    shuffle -> repeat). Global batch ``g`` (``batch_size x shard_count`` records) lies in window
    ``g // window``: that window's records, sorted by length (descending, ties in shuffled order; not with
    ``window`` 1), cut into global batches, in a seeded shuffled batch order. Process ``shard_index`` takes its
    ``batch_size`` slice of every global batch; every process knows every batch's length (:meth:`batch_length`)
    without talking to the others, so all of them cut a step's batch to the same length."""

    def __init__(self, grouping: LengthGrouping, num_records: int, *, batch_size: int, seed: int, shard_index: int,
                 shard_count: int, num_epochs: int | None):
        lengths = np.asarray(grouping.lengths)
        if lengths.shape != (num_records,):
            raise ValueError(f"length grouping: {lengths.shape[0] if lengths.ndim else 'no'} lengths for "
                             f"{num_records} records; expected one per record")
        self.grouping = grouping
        self.lengths = np.minimum(lengths.astype(np.int64), grouping.max_len)
        self.n, self.local, self.seed = num_records, batch_size, seed
        self.shard_index, self.shard_count, self.global_batch = shard_index, shard_count, batch_size * shard_count
        total = sys.maxsize if num_epochs is None else num_records * num_epochs
        self.num_batches = total // self.global_batch
        if num_epochs is not None and self.num_batches == 0:
            raise ValueError(f"length grouping: {total} examples make no global batch of {self.global_batch}")
        self.num_elements = self.num_batches * batch_size
        self._perms: dict[int, np.ndarray] = {}
        self._windows: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _epoch_perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 4:
                self._perms.pop(next(iter(self._perms)))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def _window(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(``[k, global_batch]`` record indices, ``[k]`` batch lengths) of window ``w``."""
        if w not in self._windows:
            per = self.grouping.window
            g0, g1 = w * per, min((w + 1) * per, self.num_batches)
            pos = np.arange(g0 * self.global_batch, g1 * self.global_batch, dtype=np.int64)
            epochs, offsets = np.divmod(pos, self.n)
            records = np.empty(len(pos), np.int64)
            for e in np.unique(epochs):
                sel = epochs == e
                records[sel] = self._epoch_perm(int(e))[offsets[sel]]
            if per > 1:  # (one batch: its records as drawn, so each process's slice is a random one)
                records = records[np.argsort(-self.lengths[records], kind="stable")]
            records = records.reshape(g1 - g0, self.global_batch)
            records = records[np.random.default_rng([self.seed, w, 1]).permutation(g1 - g0)]
            longest = self.lengths[records].max(axis=1)
            if len(self._windows) >= 4:
                self._windows.pop(next(iter(self._windows)))
            self._windows[w] = (records, np.array([self.grouping.bucket_length(x) for x in longest], np.int64))
        return self._windows[w]

    def record(self, index: int) -> int:
        """The source record of this process's element ``index``."""
        g, k = divmod(int(index), self.local)
        records, _ = self._window(g // self.grouping.window)
        return int(records[g % self.grouping.window, self.shard_index * self.local + k])

    def batch_length(self, g: int) -> int:
        """The (global) padded length of batch ``g``."""
        _, lengths = self._window(int(g) // self.grouping.window)
        return int(lengths[int(g) % self.grouping.window])

    def trim_batch(self, g: int, batch: Example) -> Example:
        """Batch ``g`` with its sequence axis cut to :meth:`batch_length` (``map_with_index`` signature)."""
        return trim_sequences(batch, self.batch_length(g), self.grouping.max_len, self.grouping.padding)

    def pack_plan(self, g: int) -> packing.PackPlan:
        """This process's plan for batch ``g``: first fit decreasing over its records' lengths, with the row count
        of the process that needs the most (every process plans every slice, so all agree)."""
        records, _ = self._window(int(g) // self.grouping.window)
        lengths = self.lengths[records[int(g) % self.grouping.window]].reshape(self.shard_count, self.local)
        plans = [packing.first_fit_decreasing(x, self.grouping.max_len, row_multiple=self.grouping.pack_rows)
                 for x in lengths]
        return dataclasses.replace(plans[self.shard_index], num_rows=max(p.num_rows for p in plans))

    def pack_batch(self, g: int, batch: Example) -> Example:
        """Batch ``g`` packed by :meth:`pack_plan` (``map_with_index`` signature)."""
        gr = self.grouping
        return packing.pack_sequences(batch, self.pack_plan(g), max_len=gr.max_len, padding=gr.padding,
                                      length_key=gr.length_key)


def trim_sequences(batch: Example, length: int, max_len: int, padding: str = "left") -> Example:
    """``batch`` with every array whose axis 1 has ``max_len`` entries cut to ``length`` (the last columns
    with left padding, the first with right padding). Raises when a cut column holds anything but zeros."""
    if length >= max_len:
        return batch
    out = {}
    seq = packing.sequence_keys(batch, max_len)
    for key, v in batch.items():
        if key in seq:
            keep, cut = (v[:, max_len - length:], v[:, :max_len - length]) if padding == "left" else \
                (v[:, :length], v[:, length:])
            if cut.any():
                raise ValueError(f"length grouping: batch field {key!r} has real values beyond the batch length "
                                 f"{length} of {max_len}; the record lengths given are not upper bounds of the "
                                 "examples' lengths")
            v = keep
        out[key] = v
    return out


def _grouped_record(source, order: LengthGroupedOrder, index: int):
    return source[order.record(index)]
