"""Data plumbing: TFDS builders that write ArrayRecord (no TensorFlow), read back through Grain.

``build_dataset`` turns example generators into a TFDS dataset folder (``file_format='array_record'``);
``open_split`` gives a random-access source for it; ``make_iterator`` shards it per process, shuffles
with a seed (a new order every epoch), applies transforms, batches, and returns a Grain iterator whose
state the checkpoint captures.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

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
) -> grain.DatasetIterator:
    """Per-process shard -> shuffle -> repeat -> transforms -> batch, as a checkpointable Grain iterator.

    ``batch_size`` is this process's share of the global batch. The shard defaults to this JAX process.
    ``random_transforms`` get a numpy Generator seeded per element (deterministic across resumes).
    """
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
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
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
    if worker_count > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(it_ds)
